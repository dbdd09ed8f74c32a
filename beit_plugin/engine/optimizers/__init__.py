from .bf16_amp_optim_wrapper import BF16AmpOptimWrapper
from .frozen_params_constructor import FrozenParamsOptimWrapperConstructor
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor

__all__ = [
    'BF16AmpOptimWrapper', 'FrozenParamsOptimWrapperConstructor',
    'LayerDecayOptimWrapperConstructor'
]
