from .mim_head import BEiTMIMHead

__all__ = ['BEiTMIMHead']
