from .masking import BlockwiseMaskGenerator

__all__ = ['BlockwiseMaskGenerator']
