"""Foreign BEiT, VQ-KD and DALL-E checkpoints in our parameter names, their
validation against a target model, and export to transformers.

``convert_state_dict(state_dict, source=..., model=...)`` supports:

==============  =====================================================
model           sources
==============  =====================================================
``'beit'``      ``'unilm'`` (official BEiT / BEiT v2 pretraining and
                fine-tuning), ``'timm'``, ``'hf'`` (transformers),
                ``'mmpretrain'``, ``'mmseg'``
``'vqkd'``      ``'unilm'`` (official BEiT v2 tokenizer), ``'mmpretrain'``
``'dalle'``     ``'openai'`` (also ``'unilm'``, ``'mmpretrain'``: the same
                layout)
==============  =====================================================
"""
from typing import Dict

from beit_plugin.models.tokenizers import vqkd_from_mmpretrain
from .common import (KIND_NAMES, SOURCES_OF_LAYOUT, StateDict, describe,
                     state_dict_problems, under, unwrap, validate_state_dict,
                     with_prefix)
from .files import read_weights
from .hf import beit_from_hf, export_hf, hf_config, hf_state_dict
from .infer import backbone_kwargs, beit_target, dalle_target, vqkd_target
from .official import beit_from_official, dalle_from_openai, vqkd_from_official
from .openmmlab import beit_from_openmmlab

_CONVERTERS = {
    ('unilm', 'beit'): beit_from_official,
    ('timm', 'beit'): beit_from_official,
    ('hf', 'beit'): beit_from_hf,
    ('mmpretrain', 'beit'): beit_from_openmmlab,
    ('mmseg', 'beit'): beit_from_openmmlab,
    ('unilm', 'vqkd'): vqkd_from_official,
    ('mmpretrain', 'vqkd'): vqkd_from_mmpretrain,
    ('openai', 'dalle'): dalle_from_openai,
    ('unilm', 'dalle'): dalle_from_openai,
    ('mmpretrain', 'dalle'): dalle_from_openai,
}
_SOURCE_LAYOUTS = {'unilm': 'official', 'timm': 'official', 'hf': 'hf',
                   'mmpretrain': 'openmmlab', 'mmseg': 'openmmlab'}
SOURCES = tuple(sorted({source for source, _ in _CONVERTERS}))
LAYOUTS = ('backbone', 'model')


def _check_kind(state_dict: StateDict, source: str, model: str) -> None:
    """Refuse, in one line, a checkpoint that is not a ``model`` in
    ``source``'s layout, saying what it looks like."""
    seen = describe(state_dict)
    if seen.kind != model:
        hint = f": convert it with model='{seen.kind}'" \
            if seen.kind in KIND_NAMES else ''
        raise ValueError(f'checkpoint looks like {seen.text}, not like '
                         f'{KIND_NAMES[model]}{hint}')
    if seen.layout == 'ours':
        raise ValueError(f'checkpoint looks like {seen.text}: it needs no '
                         'conversion, load it as it is')
    expected = _SOURCE_LAYOUTS.get(source)
    if seen.layout and expected and seen.layout != expected:
        raise ValueError(f'checkpoint looks like {seen.text}, not like a '
                         f'{source} checkpoint: convert it with source='
                         f'{SOURCES_OF_LAYOUT[seen.layout]}')


def backbone_only(state_dict: StateDict) -> StateDict:
    """Our backbone's keys (no prefix) of a state dict in our models'
    layout. BEiT v2 pretraining keeps its final norm, shared by both
    branches, in the neck (``neck.norm``): here it becomes the backbone's
    ``norm``, as in the official backbone."""
    backbone = under(state_dict, 'backbone.')
    if 'norm.weight' not in backbone and any(
            k.startswith('neck.cls_pt_layers.') for k in state_dict):
        backbone.update(with_prefix(under(state_dict, 'neck.norm.'), 'norm.'))
    return backbone


def convert_state_dict(state_dict: Dict,
                       source: str,
                       model: str = 'beit',
                       layout: str = 'backbone') -> StateDict:
    """Convert a ``source`` checkpoint to our parameter names.

    Args:
        state_dict: the loaded checkpoint; ``model`` / ``module`` /
            ``state_dict`` wrappers and a ``module.`` key prefix are removed.
        source: where it comes from, one of :data:`SOURCES` (see the module
            docstring for which serves which ``model``).
        model: ``'beit'`` (a backbone, with its pretraining or
            classification head), ``'vqkd'`` (:class:`VQKDTokenizer`) or
            ``'dalle'`` (:class:`DALLEEncoder`).
        layout: for ``model='beit'``: ``'backbone'``, the keys of our
            :class:`BEiT` (no prefix); or ``'model'``, the keys of our whole
            model, ``backbone.*`` plus whatever else the checkpoint holds
            that our models have: BEiT pretraining (``head.cls_head``, v2's
            ``neck.cls_pt_layers`` and ``neck.norm``, MMPretrain's
            ``target_generator``), classification (``head.fc``) or
            MMSegmentation's neck and decode heads. Ignored for tokenizers.

    Returns:
        The converted state dict. A shared relative position bias stays
        shared: our backbone expands it per block (and resizes tables and
        position embeddings) when it loads into a model that needs that.

    Raises:
        ValueError: an unknown ``source`` / ``model`` pair, or a checkpoint
            that is not a ``model`` in ``source``'s layout (one line saying
            what it looks like).
    """
    if (source, model) not in _CONVERTERS:
        raise ValueError(
            f'no converter from {source!r} for model {model!r}; supported: '
            + ', '.join(f'{s}/{m}' for s, m in sorted(_CONVERTERS)))
    if layout not in LAYOUTS:
        raise ValueError(f'layout {layout!r} is not one of {LAYOUTS}')
    state_dict = unwrap(state_dict)
    _check_kind(state_dict, source, model)
    converted = _CONVERTERS[source, model](state_dict)
    if model != 'beit' or layout == 'model':
        return converted
    return backbone_only(converted)


__all__ = [
    'SOURCES', 'LAYOUTS', 'StateDict', 'convert_state_dict', 'backbone_only',
    'unwrap', 'describe', 'validate_state_dict', 'state_dict_problems',
    'backbone_kwargs', 'beit_target', 'vqkd_target', 'dalle_target',
    'beit_from_hf', 'hf_state_dict', 'hf_config', 'export_hf', 'read_weights',
    'with_prefix', 'under'
]
