"""What every converter shares: unwrapping, recognising what a checkpoint
is, renaming by tables, and validating a result against a target model."""
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]
# (pattern, replacement) pairs for ``re.sub``; the first one that matches wins
Renames = Sequence[Tuple[str, str]]

KIND_NAMES = {'beit': 'a BEiT model', 'vqkd': 'a VQ-KD tokenizer',
              'dalle': 'a DALL-E encoder'}
LAYOUT_NAMES = {
    'official': 'the official / timm layout',
    'hf': "transformers' layout",
    'openmmlab': "OpenMMLab's layout",
    'ours': "beit_plugin's own layout",
}
SOURCES_OF_LAYOUT = {
    'official': "'unilm' or 'timm'",
    'hf': "'hf'",
    'openmmlab': "'mmpretrain' or 'mmseg'",
}

_KIND_PATTERNS = [
    ('vqkd', r'^quantize\.embedding\.weight$'),
    ('dalle', r'^blocks\.(input|group_\d+|output)\.'),
]
_LAYOUT_PATTERNS = [
    ('hf', r'^(beit\.)?(embeddings\.cls_token$|encoder\.layer\.\d+\.|'
           r'layers\.\d+\.(attention|layernorm_before)\.)'),
    ('openmmlab', r'^(backbone\.)?(layers\.\d+\.(ln1|ffn)\.|'
                  r'patch_embed\.projection\.)'),
    ('ours', r'^backbone\.(blocks\.\d+\.|cls_token$)'),
    ('official', r'^(blocks\.\d+\.attn\.qkv\.weight|cls_token)$'),
]


class Description(NamedTuple):
    """What a state dict looks like."""
    kind: str  # a KIND_NAMES key or 'unknown'
    layout: str  # a LAYOUT_NAMES key, '' where none applies
    text: str  # for messages, with a key that tells


def unwrap(checkpoint: Dict) -> StateDict:
    """The state dict inside a checkpoint.

    Unwraps the containers training scripts use (``model``, ``module``,
    ``state_dict``, nested in any order) and strips a ``module.`` prefix that
    every key carries (a model saved inside DistributedDataParallel).
    """
    for key in ('model', 'module', 'state_dict'):
        if isinstance(checkpoint.get(key), dict):
            return unwrap(checkpoint[key])
    if checkpoint and all(k.startswith('module.') for k in checkpoint):
        checkpoint = {k[len('module.'):]: v for k, v in checkpoint.items()}
    return checkpoint


def describe(state_dict: StateDict) -> Description:
    """Recognise a (unwrapped) state dict: BEiT, VQ-KD or DALL-E, and in
    which code base's key layout."""
    keys = sorted(state_dict)

    def first_match(pattern: str) -> Optional[str]:
        return next((key for key in keys if re.match(pattern, key)), None)

    def found(kind: str, layout: str, key: str) -> Description:
        where = f' in {LAYOUT_NAMES[layout]}' if layout else ''
        return Description(kind, layout, f'{KIND_NAMES[kind]}{where} ({key})')

    for kind, pattern in _KIND_PATTERNS:
        key = first_match(pattern)
        if key and kind == 'dalle':
            return found(kind, '', key)
        if key:
            return found(kind, 'openmmlab' if first_match(
                r'^encoder\.layers\.') else 'official', key)
    for layout, pattern in _LAYOUT_PATTERNS:
        key = first_match(pattern)
        if key:
            return found('beit', layout, key)
    return Description(
        'unknown', '', 'nothing we know (not BEiT, VQ-KD or DALL-E; first '
        f'keys: {", ".join(keys[:4])})')


def rename(key: str, renames: Renames) -> str:
    """``key`` through the first matching ``(pattern, replacement)``."""
    for pattern, replacement in renames:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    return key


def with_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Every key with ``prefix`` added."""
    return {prefix + k: v for k, v in state_dict.items()}


def under(state_dict: StateDict, prefix: str) -> StateDict:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix)}


def drop_index_buffers(state_dict: StateDict) -> StateDict:
    """Without relative position index buffers (derived, never learned)."""
    return {k: v for k, v in state_dict.items()
            if not k.endswith('relative_position_index')}


def _as_loaded(state_dict: StateDict, model: nn.Module) -> StateDict:
    """``state_dict`` as ``model.load_state_dict`` would see it after the
    model's own load-time adaptations: every sub-module's
    ``adapt_state_dict`` (index buffers dropped, a shared relative position
    bias expanded per block, position tables resized, DALL-E ``.w``/``.b``
    renamed ...)."""
    adapted = dict(state_dict)
    for name, module in model.named_modules():
        if hasattr(module, 'adapt_state_dict'):
            module.adapt_state_dict(adapted, f'{name}.' if name else '')
    return adapted


def state_dict_problems(state_dict: StateDict,
                        model: nn.Module) -> List[str]:
    """Every missing, unexpected and mis-shaped key of ``state_dict`` for
    ``model`` (after the model's load-time adaptations), one line each."""
    adapted = _as_loaded(state_dict, model)
    own = model.state_dict()
    problems = [f'missing {key}' for key in own if key not in adapted]
    problems += [f'unexpected {key}' for key in adapted if key not in own]
    for key, value in own.items():
        theirs = adapted.get(key)
        if isinstance(theirs, torch.Tensor) and theirs.shape != value.shape:
            problems.append(f'mis-shaped {key}: checkpoint '
                            f'{tuple(theirs.shape)} vs model '
                            f'{tuple(value.shape)}')
    return problems


def validate_state_dict(state_dict: StateDict, model: nn.Module,
                        what: Optional[str] = None) -> None:
    """Check that ``state_dict`` loads into ``model`` completely.

    The check sees the state dict as the model's loading does (a shared
    relative position bias is accepted for a model with one table per
    block, tables and position embeddings of another grid are resized...).

    Args:
        state_dict: keys as ``model.state_dict()`` names them.
        model: the target; it is not modified.
        what: the name of the checkpoint, for the message.

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped key
            (with both shapes), one per line.
    """
    problems = state_dict_problems(state_dict, model)
    if problems:
        name = f'{what} ' if what else ''
        raise ValueError(
            f'checkpoint {name}does not fit {type(model).__name__} '
            f'({len(problems)} problems):\n  ' + '\n  '.join(problems))
