"""Models whose shapes match a converted state dict, read off its tensors:
the targets a conversion is validated against."""
import math
import re
from typing import Dict, Optional, Set

import torch
from mmpretrain.models.heads import LinearClsHead
from torch import nn

from beit_plugin.models.backbones import BEiT
from beit_plugin.models.backbones.relative_position import infer_window
from beit_plugin.models.heads import BEiTMIMHead
from beit_plugin.models.necks import BEiTV2PatchAggregation
from beit_plugin.models.tokenizers import DALLEEncoder, VQKDTokenizer
from .common import StateDict, under

# BEiT models keep 64 channels per attention head; the default when no
# relative position table tells the head count
HEAD_DIMS = 64


def _require(state_dict: StateDict, key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f'cannot infer the architecture: the checkpoint has '
                         f'no {key!r} (found {sorted(state_dict)[:6]} ...)')
    return state_dict[key]


def _indices(state_dict: StateDict, pattern: str) -> Set[int]:
    """The integers ``pattern``'s group 1 takes over the keys."""
    matches = (re.match(pattern, key) for key in state_dict)
    return {int(match[1]) for match in matches if match}


def backbone_kwargs(state_dict: StateDict,
                    num_heads: Optional[int] = None) -> Dict:
    """:class:`BEiT` arguments matching a state dict of our backbone keys.

    Width, depth, MLP width, patch size and input channels come from the
    weights, the patch grid from the position embedding ``(1, 1+N, C)`` or
    a relative position table, the optional parts from the keys present.
    The head count is a relative position table's column count, else
    ``num_heads``, else ``C // 64``.

    Raises:
        ValueError: a key the architecture is read from is missing.
    """
    dims = _require(state_dict, 'cls_token').shape[-1]
    proj = _require(state_dict, 'patch_embed.proj.weight')  # (C, C_in, p, p)
    tables = [v for k, v in state_dict.items()
              if k.endswith('relative_position_bias_table')]
    if 'pos_embed' in state_dict:
        side = math.isqrt(state_dict['pos_embed'].shape[1] - 1)
    elif tables:
        side = infer_window(tables[0].shape[0])[0]
    else:
        raise ValueError('cannot infer the input size: the checkpoint has '
                         'neither pos_embed nor relative position tables')
    return dict(
        arch=dict(
            embed_dims=dims,
            num_layers=max(_indices(state_dict, r'blocks\.(\d+)\.'),
                           default=-1) + 1,
            num_heads=tables[0].shape[1] if tables else
            num_heads or max(dims // HEAD_DIMS, 1),
            feedforward_channels=_require(
                state_dict, 'blocks.0.mlp.fc1.weight').shape[0]),
        img_size=side * proj.shape[-1],
        patch_size=proj.shape[-1],
        in_channels=proj.shape[1],
        qkv_bias='blocks.0.attn.q_bias' in state_dict,
        final_norm='norm.weight' in state_dict,
        out_type='avg_featmap' if 'fc_norm.weight' in state_dict else 'raw',
        use_abs_pos_emb='pos_embed' in state_dict,
        use_rel_pos_bias='blocks.0.attn.relative_position_bias_table'
        in state_dict,
        use_shared_rel_pos_bias='rel_pos_bias.relative_position_bias_table'
        in state_dict,
        layer_scale_init_value=0.1 if 'blocks.0.gamma_1' in state_dict
        else 0.,
        use_mask_token='mask_token' in state_dict)


def beit_target(state_dict: StateDict,
                num_heads: Optional[int] = None) -> nn.ModuleDict:
    """Our models' parts for a state dict in their layout: ``backbone``
    (:class:`BEiT`), and as present ``neck`` (:class:`BEiTV2PatchAggregation`,
    for ``neck.cls_pt_layers``) and ``head`` (:class:`BEiTMIMHead` for
    ``head.cls_head``, ``LinearClsHead`` for ``head.fc``)."""
    backbone = backbone_kwargs(under(state_dict, 'backbone.'), num_heads)
    arch = backbone['arch']
    parts = dict(backbone=BEiT(**backbone))
    layers = _indices(state_dict, r'neck\.cls_pt_layers\.(\d+)\.')
    if layers:
        parts['neck'] = BEiTV2PatchAggregation(
            arch['embed_dims'], arch['num_heads'],
            arch['feedforward_channels'], num_layers=len(layers),
            backbone_layers=arch['num_layers'],
            layer_scale_init_value=backbone['layer_scale_init_value'])
    if 'head.cls_head.weight' in state_dict:
        num_embed, dims = state_dict['head.cls_head.weight'].shape
        parts['head'] = BEiTMIMHead(dims, num_embed)
    elif 'head.fc.weight' in state_dict:
        classes, dims = state_dict['head.fc.weight'].shape
        parts['head'] = LinearClsHead(classes, dims)
    return nn.ModuleDict(parts)


def vqkd_target(state_dict: StateDict,
                num_heads: Optional[int] = None) -> VQKDTokenizer:
    """A :class:`VQKDTokenizer` for a state dict of its keys (with a decoder
    when the state dict has one)."""
    decoder = target_dims = None
    if 'decoder.cls_token' in state_dict:
        decoder = backbone_kwargs(under(state_dict, 'decoder.'), num_heads)
        for fixed in ('img_size', 'patch_size', 'in_channels'):
            del decoder[fixed]  # set by the tokenizer from the encoder
        target_dims = _require(state_dict,
                               'decode_task_layer.2.weight').shape[0]
    num_embed, code_dims = _require(state_dict,
                                    'quantize.embedding.weight').shape
    return VQKDTokenizer(
        encoder=backbone_kwargs(under(state_dict, 'encoder.'), num_heads),
        decoder=decoder, target_dims=target_dims, num_embed=num_embed,
        embed_dims=code_dims)


def dalle_target(state_dict: StateDict) -> DALLEEncoder:
    """A :class:`DALLEEncoder` for a state dict in OpenAI's layout (``.w`` /
    ``.b`` or ``.weight`` / ``.bias``)."""
    def weight(name: str) -> torch.Tensor:
        for suffix in ('.w', '.weight'):
            if name + suffix in state_dict:
                return state_dict[name + suffix]
        return _require(state_dict, f'{name}.w')

    first = weight('blocks.input')  # (n_hid, C_in, 7, 7)
    return DALLEEncoder(
        group_count=len(_indices(state_dict, r'blocks\.group_(\d+)\.')),
        n_hid=first.shape[0],
        n_blk_per_group=len(_indices(state_dict,
                                     r'blocks\.group_1\.block_(\d+)\.')),
        input_channels=first.shape[1],
        vocab_size=weight('blocks.output.conv').shape[0])
