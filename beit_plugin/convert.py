"""Map foreign BEiT checkpoints onto our parameter names.

``convert_state_dict(state_dict, source=...)`` returns a state dict for our
:class:`~beit_plugin.models.backbones.BEiT` backbone. Supported sources:

- ``'timm'``: timm ``beit*`` / ``beitv2*`` models (their names are the
  official ones, which ours follow).
"""
from typing import Callable, Dict

import torch

StateDict = Dict[str, torch.Tensor]


def _unwrap(state_dict: Dict) -> StateDict:
    """Strip the containers training scripts wrap weights in."""
    for key in ('model', 'module', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    return state_dict


def _from_timm(state_dict: StateDict) -> StateDict:
    """timm keys equal ours; the classifier head is not part of a backbone
    and the relative position index buffers are derived, not learned."""
    return {
        key: value
        for key, value in state_dict.items()
        if not key.startswith('head.')
        and not key.endswith('relative_position_index')
    }


_CONVERTERS: Dict[str, Callable[[StateDict], StateDict]] = {
    'timm': _from_timm,
}


def convert_state_dict(state_dict: Dict, source: str) -> StateDict:
    """Convert a ``source`` checkpoint's state dict to our backbone's keys.

    Args:
        state_dict: the loaded checkpoint (a wrapping ``model``/``module``/
            ``state_dict`` entry is unwrapped).
        source: where it comes from, one of :data:`SOURCES`.

    Returns:
        A state dict for :class:`beit_plugin.models.backbones.BEiT`.
    """
    if source not in _CONVERTERS:
        raise ValueError(f'unknown checkpoint source {source!r}; supported: '
                         f'{sorted(_CONVERTERS)}')
    return _CONVERTERS[source](_unwrap(state_dict))


SOURCES = tuple(sorted(_CONVERTERS))
