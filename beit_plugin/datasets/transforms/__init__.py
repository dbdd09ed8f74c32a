from .loading import CheckedLoadAnnotations, CheckedLoadImageFromFile
from .masking import BlockwiseMaskGenerator
from .multi_view_masking import MultiViewBlockwiseMaskGenerator

__all__ = [
    'BlockwiseMaskGenerator', 'CheckedLoadAnnotations',
    'CheckedLoadImageFromFile', 'MultiViewBlockwiseMaskGenerator'
]
