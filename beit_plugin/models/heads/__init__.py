from .ibot_loss import iBOTLoss
from .ibot_projection import iBOTProjectionHead
from .mim_head import BEiTMIMHead
from .pixel_regression_head import PixelRegressionHead

__all__ = [
    'BEiTMIMHead', 'PixelRegressionHead', 'iBOTLoss', 'iBOTProjectionHead'
]
