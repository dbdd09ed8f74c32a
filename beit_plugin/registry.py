"""Registries of the ``beit_plugin`` scope.

Every registry is a child of MMPretrain's registry of the same kind, so that
MMPretrain's components resolve from our configs
(``default_scope='beit_plugin'``); ``FUNCTIONS`` (MMPretrain has none) is a
child of MMEngine's.

For ``type='beit_plugin.BEiT'`` to resolve from any other scope, e.g. from an
MMSegmentation config (``default_scope='mmseg'``), our registries must also
be direct children of MMEngine's root registries: MMEngine 0.10 looks a
scope prefix up only among the root's direct children. :func:`attach_to_root`
does that; :mod:`beit_plugin.compat` calls it on the MMEngine versions that
need it (fix ``scope_prefix_from_any_scope``).
"""
from typing import List

from mmengine import registry as mmengine_registry
from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

SCOPE = 'beit_plugin'

#: Our registries that are not direct children of MMEngine's roots.
_NESTED: List[Registry] = []


def _child(name: str, location: str = None) -> Registry:
    parent: Registry = getattr(mmpretrain_registry, name)
    registry = Registry(
        parent.name,
        parent=parent,
        scope=SCOPE,
        locations=[f'{SCOPE}.{location}'] if location else [])
    _NESTED.append(registry)
    return registry


def reachable_from_root(registry: Registry) -> bool:
    """Whether MMEngine's root of ``registry`` resolves our scope prefix to
    ``registry`` (``'beit_plugin.X'`` from any scope)."""
    root = registry._get_root_registry()
    return root.children.get(SCOPE) is registry


def attach_to_root() -> int:
    """Make each of our registries a direct child of MMEngine's root
    registry of its kind (through ``Registry._add_child``: MMEngine has no
    public way). Our registries keep their parents (MMPretrain's); roots
    that already hold a ``beit_plugin`` child are left as they are.

    Returns:
        int: How many registries were attached.
    """
    attached = 0
    for registry in _NESTED:
        root = registry._get_root_registry()
        if SCOPE not in root.children:
            root._add_child(registry)
            attached += 1
    return attached


RUNNERS = _child('RUNNERS', 'engine')
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS', 'engine')
LOOPS = _child('LOOPS', 'engine')
HOOKS = _child('HOOKS', 'engine')
LOG_PROCESSORS = _child('LOG_PROCESSORS', 'engine')
OPTIMIZERS = _child('OPTIMIZERS', 'engine')
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS', 'engine')
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS', 'engine')
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS', 'engine')
DATASETS = _child('DATASETS', 'datasets')
DATA_SAMPLERS = _child('DATA_SAMPLERS', 'datasets')
TRANSFORMS = _child('TRANSFORMS', 'datasets')
MODELS = _child('MODELS', 'models')
MODEL_WRAPPERS = _child('MODEL_WRAPPERS', 'engine')
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS', 'models')
BATCH_AUGMENTS = _child('BATCH_AUGMENTS', 'models')
TASK_UTILS = _child('TASK_UTILS', 'models')
METRICS = _child('METRICS')
EVALUATORS = _child('EVALUATORS')
VISUALIZERS = _child('VISUALIZERS')
VISBACKENDS = _child('VISBACKENDS')
# a direct child of MMEngine's root (Registry adds it to its parent)
FUNCTIONS = Registry(
    'function', parent=mmengine_registry.FUNCTIONS, scope=SCOPE,
    locations=[f'{SCOPE}.datasets'])
