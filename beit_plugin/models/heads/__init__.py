from .mim_head import BEiTMIMHead
from .pixel_regression_head import PixelRegressionHead

__all__ = ['BEiTMIMHead', 'PixelRegressionHead']
