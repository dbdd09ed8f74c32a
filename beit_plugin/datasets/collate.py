"""The collate function our configs name: MMEngine's ``default_collate``,
tolerating the ``_scope_`` key an inherited config gives it.

A config inheriting an ``mmpretrain::`` (or ``beit_plugin::``) base gets
``_scope_='mmpretrain'`` in every dict of that base with a ``type``, the
dataloader's ``collate_fn=dict(type='default_collate')`` included; MMEngine's
``Runner.build_dataloader`` (0.10.x) passes every key but ``type`` on to the
function, so ``default_collate`` fails with ``got an unexpected keyword
argument '_scope_'``. Our configs that inherit such a dataloader name
``collate_fn=dict(type='beit_plugin.default_collate')``, which drops the key;
nothing in MMEngine is changed.
"""
from typing import Any, Optional, Sequence

from mmengine.dataset import default_collate as mmengine_default_collate

from beit_plugin.registry import FUNCTIONS


@FUNCTIONS.register_module(name='default_collate')
def default_collate(data_batch: Sequence,
                    _scope_: Optional[str] = None) -> Any:
    """``mmengine.dataset.default_collate``; ``_scope_`` (the registry scope
    a config base gives the dict) is ignored."""
    return mmengine_default_collate(data_batch)
