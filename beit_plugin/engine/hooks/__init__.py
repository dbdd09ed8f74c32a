from .atomic_checkpoint import AtomicCheckpointHook
from .class_count_check import ClassCountCheckHook
from .codebook_usage import CodebookUsageHook
from .ema_teacher import EMATeacherHook
from .mim_visualization import MIMVisualizationHook
from .non_finite_check import NonFiniteCheckHook
from .rng_state import RNGStateHook

__all__ = [
    'AtomicCheckpointHook', 'ClassCountCheckHook', 'CodebookUsageHook',
    'EMATeacherHook', 'MIMVisualizationHook', 'NonFiniteCheckHook',
    'RNGStateHook'
]
