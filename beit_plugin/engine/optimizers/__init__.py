from .frozen_params_constructor import FrozenParamsOptimWrapperConstructor
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor

__all__ = [
    'FrozenParamsOptimWrapperConstructor', 'LayerDecayOptimWrapperConstructor'
]
