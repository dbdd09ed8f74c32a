"""Layer-wise learning-rate decay for fine-tuning our BEiT backbone.

The rules of the official BEiT code (``LayerDecayValueAssigner`` and
``get_parameter_groups`` of unilm ``beit/optim_factory.py``, the
segmentation ``LayerDecayOptimizerConstructor``) in the form of an MMEngine
optimizer wrapper constructor.
"""
from fnmatch import fnmatchcase
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from beit_plugin.models.backbones import BEiT
from beit_plugin.registry import OPTIM_WRAPPER_CONSTRUCTORS

#: Backbone parameters (and module prefixes) of the embedding layer, id 0.
EMBEDDING_NAMES = ('cls_token', 'mask_token', 'pos_embed')
#: (The shared ``rel_pos_bias.*`` is not one: the official
#: ``get_num_layer_for_vit`` gives it the last id, ``num_max_layer - 1``.)
EMBEDDING_PREFIXES = ('patch_embed.', )
#: The default ``no_decay_names``: the official classification recipe's
#: skip list, ``VisionTransformer.no_weight_decay()`` of unilm
#: ``beit/modeling_finetune.py`` (``run_class_finetuning.py`` without
#: ``--disable_weight_decay_on_rel_pos_bias``).
FINETUNE_NO_DECAY_NAMES = ('pos_embed', 'cls_token')
PARAMWISE_KEYS = ('layer_decay_rate', 'num_layers', 'no_decay_names',
                  'custom_keys')
CUSTOM_KEY_FIELDS = ('lr_mult', 'decay_mult')


def get_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter of the BEiT backbone.

    Args:
        name: parameter name relative to the backbone, e.g.
            ``blocks.0.attn.qkv.weight``.
        num_layers: number of transformer blocks ``N``.

    Returns:
        0 for ``cls_token``, ``mask_token``, ``pos_embed`` and
        ``patch_embed.*``; ``i + 1`` for ``blocks.i.*``; ``N + 1`` for the
        rest: the shared ``rel_pos_bias.*`` (as the official code has it),
        the final ``norm`` and ``fc_norm``, and parameters outside the
        backbone (heads, necks, decode heads).

    Raises:
        ValueError: for a block index ``>= num_layers``.
    """
    if name in EMBEDDING_NAMES or name.startswith(EMBEDDING_PREFIXES):
        return 0
    if name.startswith('blocks.'):
        block = int(name.split('.')[1])
        if block >= num_layers:
            raise ValueError(f'{name} is in block {block}, beyond '
                             f'num_layers={num_layers}')
        return block + 1
    return num_layers + 1


def is_no_decay(name: str, param: nn.Parameter,
                backbone_name: Optional[str] = None,
                no_decay_names: Sequence[str] = FINETUNE_NO_DECAY_NAMES
                ) -> bool:
    """Whether a parameter is excluded from weight decay, by the official
    ``get_parameter_groups`` rule: every parameter of at most one dimension
    (norms, biases, ``q_bias``/``v_bias``, ``gamma_1``/``gamma_2``), every
    ``name`` ending in ``.bias``, and backbone parameters whose
    ``backbone_name`` (relative to the backbone, e.g. ``cls_token``,
    ``blocks.0.attn.relative_position_bias_table``; None outside it) matches
    one of the ``fnmatch`` patterns ``no_decay_names``."""
    return (param.ndim <= 1 or name.endswith('.bias')
            or backbone_name is not None
            and any(fnmatchcase(backbone_name, pattern)
                    for pattern in no_decay_names))


def find_beit(model: nn.Module) -> Optional[Tuple[str, BEiT]]:
    """Module path prefix (``'backbone.'``, ``''`` for the model itself) and
    the first :class:`BEiT` inside ``model``, or None if there is none."""
    for path, module in model.named_modules():
        if isinstance(module, BEiT):
            return (f'{path}.' if path else ''), module
    return None


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay for a model holding our BEiT backbone.

    With ``N`` blocks, every parameter gets a layer id (see
    :func:`get_layer_id`): 0 for the embeddings (tokens, position embedding,
    patch embedding, shared relative position bias), ``i + 1`` for block
    ``i`` and ``N + 1`` for the rest (final norms, heads, necks). Its
    learning rate is ``lr * layer_decay_rate ** (N + 1 - layer_id)``. Its
    weight decay is the optimizer's ``weight_decay``, or 0 for the parameters
    of :func:`is_no_decay`: 1-d parameters, biases and the backbone
    parameters ``no_decay_names`` lists. Parameters with
    ``requires_grad=False`` are left out. Parameters are grouped by (layer
    id, decay or not, custom key) like the official BEiT code; each group
    also records ``layer_id`` and ``lr_scale`` (``lr / base lr``), which
    optimizers ignore.

    The backbone is the first :class:`BEiT` module of the model (e.g.
    ``backbone`` of an MMPretrain ``ImageClassifier`` or an MMSegmentation
    ``EncoderDecoder``); parameters outside it get layer ``N + 1``.

    ``paramwise_cfg`` keys:

    - ``layer_decay_rate`` (float, required): the decay per layer.
    - ``num_layers`` (int, optional): ``N``; defaults to the number of blocks
      of the BEiT backbone. Without a BEiT in the model, it is required and
      the model's own parameter names are read as backbone names.
    - ``no_decay_names`` (sequence of str, optional): backbone parameter
      names (relative to the backbone, ``fnmatch`` patterns) without weight
      decay besides 1-d parameters and biases. The recipes differ:

      - ``('pos_embed', 'cls_token')`` (the default): official
        classification fine-tuning, ``run_class_finetuning.py`` with the
        model's ``no_weight_decay()``; the relative position tables are
        decayed.
      - add ``'blocks.*.attn.relative_position_bias_table'`` for its
        ``--disable_weight_decay_on_rel_pos_bias``.
      - ``()``: the official segmentation ``LayerDecayOptimizerConstructor``,
        whose test ``name in ('pos_embed', 'cls_token')`` sees full names
        (``backbone.cls_token``) and so never matches: CLS token, position
        embedding and relative position tables are all decayed.

      No recipe exempts the mask token: the official fine-tuning and
      segmentation models have none, and pretraining decays it.
    - ``custom_keys`` (dict, optional): ``{substring: dict(lr_mult=...,
      decay_mult=...)}`` multiplied on top of the rules above for the
      parameters whose full name contains the substring (the longest
      matching key wins, as in MMEngine).

    Example::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05),
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.65,
                               no_decay_names=('pos_embed', 'cls_token')))
    """

    def _validate_cfg(self) -> None:
        super()._validate_cfg()
        if self.base_lr is None or self.base_wd is None:
            raise ValueError('LayerDecayOptimWrapperConstructor needs `lr` '
                             'and `weight_decay` in the optimizer config')
        unknown = set(self.paramwise_cfg) - set(PARAMWISE_KEYS)
        if unknown:
            raise ValueError(f'paramwise_cfg keys {sorted(unknown)} are not '
                             f'supported; use {list(PARAMWISE_KEYS)}')
        if 'layer_decay_rate' not in self.paramwise_cfg:
            raise ValueError('paramwise_cfg needs `layer_decay_rate`')
        names = self.paramwise_cfg.get('no_decay_names', ())
        if isinstance(names, str) or \
                not all(isinstance(name, str) for name in names):
            raise ValueError(
                'paramwise_cfg.no_decay_names must be a sequence of '
                f'parameter names, e.g. {FINETUNE_NO_DECAY_NAMES}; got '
                f'{names!r}')
        for key, value in self.paramwise_cfg.get('custom_keys', {}).items():
            unknown = set(value) - set(CUSTOM_KEY_FIELDS)
            if unknown:
                raise ValueError(f'custom_keys[{key!r}] has unsupported '
                                 f'fields {sorted(unknown)}; use '
                                 f'{list(CUSTOM_KEY_FIELDS)}')

    def _backbone_prefix_and_depth(self, model: nn.Module) -> Tuple[str, int]:
        found = find_beit(model)
        num_layers = self.paramwise_cfg.get('num_layers')
        if found is None:
            if num_layers is None:
                raise ValueError(
                    f'{type(model).__name__} holds no beit_plugin BEiT '
                    'backbone to infer the number of layers from; set '
                    '`num_layers` in paramwise_cfg')
            return '', num_layers
        prefix, backbone = found
        if num_layers is None:
            num_layers = len(backbone.blocks)
        return prefix, num_layers

    def add_params(self, params: List[Dict], module: nn.Module) -> None:
        """Append the parameter groups of ``module`` (the whole model) to
        ``params``, following the rules of the class docstring."""
        prefix, num_layers = self._backbone_prefix_and_depth(module)
        decay_rate = self.paramwise_cfg['layer_decay_rate']
        no_decay_names = self.paramwise_cfg.get('no_decay_names',
                                                FINETUNE_NO_DECAY_NAMES)
        full = [n for n in no_decay_names if prefix and n.startswith(prefix)]
        if full:
            # the official segmentation constructor's silent no-op
            raise ValueError(
                f'no_decay_names {full} start with {prefix!r}: they are '
                'names relative to the backbone (e.g. cls_token)')
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        groups: Dict[Tuple[int, bool, Optional[str]], Dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            backbone_name = name[len(prefix):] \
                if name.startswith(prefix) else None
            layer_id = num_layers + 1 if backbone_name is None else \
                get_layer_id(backbone_name, num_layers)
            no_decay = is_no_decay(name, param, backbone_name, no_decay_names)
            key = next((k for k in sorted_keys if k in name), None)
            group_key = (layer_id, no_decay, key)
            if group_key not in groups:
                custom = custom_keys.get(key, {})
                lr_scale = decay_rate**(num_layers + 1 - layer_id) * \
                    custom.get('lr_mult', 1.)
                weight_decay = 0. if no_decay else \
                    self.base_wd * custom.get('decay_mult', 1.)
                groups[group_key] = dict(
                    params=[], lr=self.base_lr * lr_scale,
                    weight_decay=weight_decay, layer_id=layer_id,
                    lr_scale=lr_scale)
            groups[group_key]['params'].append(param)
        params.extend(groups.values())
        print_log(
            f'Layer-wise lr decay: {num_layers} layers, rate {decay_rate}, '
            f'{len(groups)} parameter groups', logger='current')
