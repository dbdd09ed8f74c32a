"""Registries of the ``beit_plugin`` scope.

Every registry is a child of MMPretrain's registry of the same kind, so that
MMPretrain's components resolve from our configs
(``default_scope='beit_plugin'``).
Each one is also attached to MMEngine's root registry, so that
``type='beit_plugin.BEiT'`` resolves from any other scope, e.g. from an
MMSegmentation config (``default_scope='mmseg'``): MMEngine 0.10 only looks a
scope prefix up among the root registry's direct children.
"""
from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

SCOPE = 'beit_plugin'


def _child(name: str, location: str = None) -> Registry:
    parent: Registry = getattr(mmpretrain_registry, name)
    registry = Registry(
        parent.name,
        parent=parent,
        scope=SCOPE,
        locations=[f'{SCOPE}.{location}'] if location else [])
    root = parent._get_root_registry()
    if SCOPE not in root.children:
        root._add_child(registry)
    return registry


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
