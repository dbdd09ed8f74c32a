"""transformers' BEiT (``BeitModel``, ``BeitForMaskedImageModeling``,
``BeitForImageClassification``): its checkpoints to ours, and our backbone
to a ``BeitModel`` directory. transformers itself is never imported."""
import json
import re
from pathlib import Path
from typing import Dict, Union

import torch
from safetensors.torch import save_file

from beit_plugin.models.backbones import BEiT
from .common import Renames, StateDict, drop_index_buffers, rename

# Our backbone keys and transformers' serialised ones (hub files and what
# save_pretrained writes; transformers 5 renames them on loading), '#' for a
# block index. q/k/v are fused / split separately.
_KEYS = [
    ('cls_token', 'embeddings.cls_token'),
    ('mask_token', 'embeddings.mask_token'),
    ('pos_embed', 'embeddings.position_embeddings'),
    ('patch_embed.proj.', 'embeddings.patch_embeddings.projection.'),
    ('rel_pos_bias.', 'encoder.relative_position_bias.'),
    ('blocks.#.norm1.', 'encoder.layer.#.layernorm_before.'),
    ('blocks.#.norm2.', 'encoder.layer.#.layernorm_after.'),
    ('blocks.#.gamma_1', 'encoder.layer.#.lambda_1'),
    ('blocks.#.gamma_2', 'encoder.layer.#.lambda_2'),
    ('blocks.#.attn.relative_position_bias_table',
     'encoder.layer.#.attention.attention.relative_position_bias.'
     'relative_position_bias_table'),
    ('blocks.#.attn.proj.', 'encoder.layer.#.attention.output.dense.'),
    ('blocks.#.mlp.fc1.', 'encoder.layer.#.intermediate.dense.'),
    ('blocks.#.mlp.fc2.', 'encoder.layer.#.output.dense.'),
    ('norm.', 'layernorm.'),
    ('fc_norm.', 'pooler.layernorm.'),
]
# the module names of transformers >= 5 (a live model's state_dict())
_V5_TO_SERIALISED = [
    (r'^layers\.(\d+)\.attention\.q_proj\.',
     r'encoder.layer.\1.attention.attention.query.'),
    (r'^layers\.(\d+)\.attention\.k_proj\.',
     r'encoder.layer.\1.attention.attention.key.'),
    (r'^layers\.(\d+)\.attention\.v_proj\.',
     r'encoder.layer.\1.attention.attention.value.'),
    (r'^layers\.(\d+)\.attention\.o_proj\.',
     r'encoder.layer.\1.attention.output.dense.'),
    (r'^layers\.(\d+)\.mlp\.fc1\.', r'encoder.layer.\1.intermediate.dense.'),
    (r'^layers\.(\d+)\.mlp\.fc2\.', r'encoder.layer.\1.output.dense.'),
    (r'^layers\.(\d+)\.relative_position_bias\.',
     r'encoder.layer.\1.attention.attention.relative_position_bias.'),
    (r'^layers\.(\d+)\.', r'encoder.layer.\1.'),
    (r'^shared_position_bias\.', 'encoder.relative_position_bias.'),
]
_HEADS = [(r'^lm_head\.', 'head.cls_head.'), (r'^classifier\.', 'head.fc.')]
_QKV = (r'^encoder\.layer\.(\d+)\.attention\.attention\.'
        r'(query|key|value)\.(weight|bias)$')


def _renames(to_hf: bool) -> Renames:
    """:data:`_KEYS` as ``re.sub`` pairs, in one direction."""
    renames = []
    for ours, theirs in _KEYS:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        pattern = '^' + re.escape(src).replace(r'\#', r'(\d+)')
        renames.append((pattern + ('' if src.endswith('.') else '$'),
                        dst.replace('#', r'\1')))
    return renames


def beit_from_hf(state_dict: StateDict) -> StateDict:
    """A transformers BEiT state dict -> the layout of our models.

    Accepts the serialised names (``[beit.]encoder.layer.N.attention.
    attention.query`` ...) and those of a transformers >= 5 model
    (``layers.N.attention.q_proj`` ...). ``query`` / ``key`` / ``value``
    weights ``3 x (C, C)`` are fused into ``qkv.weight`` ``(3C, C)``, their
    biases become ``q_bias`` / ``v_bias`` (BEiT's key has none). The final
    ``layernorm`` (of ``BeitModel`` without mean pooling, or the top-level
    one of ``BeitForMaskedImageModeling``) becomes ``norm``,
    ``pooler.layernorm`` ``fc_norm``; ``lm_head`` -> ``head.cls_head``,
    ``classifier`` -> ``head.fc``.

    Raises:
        ValueError: a layer lacks one of the q/k/v weights, or the checkpoint
            has two final norms (``beit.layernorm`` and ``layernorm``: a
            masked-image-modeling model without mean pooling).
    """
    out: StateDict = {}
    qkv: Dict[int, StateDict] = {}
    renames = _renames(to_hf=False)
    for key, value in drop_index_buffers(state_dict).items():
        if re.match(r'^(lm_head|classifier)\.', key):
            out[rename(key, _HEADS)] = value
            continue
        key = rename(key.removeprefix('beit.'), _V5_TO_SERIALISED)
        match = re.match(_QKV, key)
        if match:
            qkv.setdefault(int(match[1]), {})[f'{match[2]}.{match[3]}'] = \
                value
            continue
        new = 'backbone.' + rename(key, renames)
        if new in out:
            raise ValueError(
                f'checkpoint has two final norms (beit.{key} and {key}): '
                'our backbone has one')
        out[new] = value
    for index, parts in qkv.items():
        missing = {'query.weight', 'key.weight', 'value.weight'} - set(parts)
        if missing:
            raise ValueError(f'layer {index} of the checkpoint lacks '
                             f'{sorted(missing)}')
        prefix = f'backbone.blocks.{index}.attn.'
        out[prefix + 'qkv.weight'] = torch.cat([
            parts['query.weight'], parts['key.weight'], parts['value.weight']
        ])
        for name, ours in (('query.bias', 'q_bias'), ('value.bias', 'v_bias')):
            if name in parts:
                out[prefix + ours] = parts[name]
    return out


def hf_state_dict(backbone_state: StateDict) -> StateDict:
    """Our backbone's state dict -> a ``BeitModel``'s, in the serialised
    names that transformers 4 and 5 both load. ``qkv.weight`` ``(3C, C)`` is
    split into ``query`` / ``key`` / ``value``; ``q_bias`` / ``v_bias``
    become their biases (zeros without them: transformers always has
    them). Tensors are contiguous copies (safetensors needs them so)."""
    out = {}
    renames = _renames(to_hf=True)
    for key, value in drop_index_buffers(backbone_state).items():
        match = re.match(r'^blocks\.(\d+)\.attn\.(qkv\.weight|[qv]_bias)$',
                         key)
        if not match:
            out[rename(key, renames)] = value.detach().clone()
        elif match[2] == 'qkv.weight':  # q_bias / v_bias go with it
            prefix = f'encoder.layer.{match[1]}.attention.attention.'
            for name, part in zip(('query', 'key', 'value'),
                                  value.detach().chunk(3)):
                out[f'{prefix}{name}.weight'] = part.clone()
                if name != 'key':
                    bias = backbone_state.get(
                        f'blocks.{match[1]}.attn.{name[0]}_bias')
                    out[f'{prefix}{name}.bias'] = bias.detach().clone() \
                        if bias is not None else part.new_zeros(len(part))
    return out


def hf_config(model: BEiT) -> Dict:
    """The ``config.json`` of a transformers ``BeitModel`` equal to
    ``model`` (``model_type='beit'``).

    Raises:
        ValueError: ``model`` has both a final ``norm`` and an ``fc_norm``,
            or neither: a ``BeitModel`` has exactly one (``layernorm``
            without mean pooling, ``pooler.layernorm`` with it); or its
            patch grid is not square: transformers (5.x) reshapes position
            tables as square grids, so it would compute other outputs.
    """
    if model.patch_grid[0] != model.patch_grid[1]:
        raise ValueError(
            f'a transformers BeitModel handles square patch grids only; this '
            f'backbone is built for {model.patch_grid}')
    if (model.norm is None) == (model.fc_norm is None):
        raise ValueError(
            'a transformers BeitModel has one final norm, layernorm '
            '(final_norm=True) or pooler.layernorm (fc_norm, '
            "out_type='avg_featmap'); this backbone has "
            f'{"both" if model.norm is not None else "neither"}')
    return {
        'architectures': ['BeitModel'],
        'model_type': 'beit',
        'hidden_size': model.embed_dims,
        'num_hidden_layers': model.num_layers,
        'num_attention_heads': model.arch_settings['num_heads'],
        'intermediate_size': model.arch_settings['feedforward_channels'],
        'hidden_act': 'gelu',
        'hidden_dropout_prob': 0.0,
        'attention_probs_dropout_prob': 0.0,
        'drop_path_rate': 0.0,
        'layer_norm_eps': model.blocks[0].norm1.eps,
        'image_size': model.patch_grid[0] * model.patch_size,
        'patch_size': model.patch_size,
        'num_channels': model.patch_embed.proj.in_channels,
        'use_mask_token': model.mask_token is not None,
        'use_absolute_position_embeddings': model.pos_embed is not None,
        'use_relative_position_bias': model.blocks[0].attn.window is not None,
        'use_shared_relative_position_bias': model.rel_pos_bias is not None,
        'layer_scale_init_value':
        0.1 if model.blocks[0].gamma_1 is not None else 0.0,
        'use_mean_pooling': model.fc_norm is not None,
    }


def export_hf(model: BEiT, out_dir: Union[str, Path]) -> Path:
    """Write ``model`` as a transformers ``BeitModel`` directory:
    ``config.json`` (:func:`hf_config`) and ``model.safetensors``
    (:func:`hf_state_dict`), loadable with
    ``BeitModel.from_pretrained(out_dir)`` and giving the same
    ``last_hidden_state`` ``(B, 1+N, C)`` as ``model``'s raw output.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    config = hf_config(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
    save_file(hf_state_dict(model.state_dict()),
              str(out_dir / 'model.safetensors'), metadata={'format': 'pt'})
    return out_dir
