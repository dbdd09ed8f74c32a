from .loading import CheckedLoadAnnotations, CheckedLoadImageFromFile
from .masking import BlockwiseMaskGenerator

__all__ = [
    'BlockwiseMaskGenerator', 'CheckedLoadAnnotations',
    'CheckedLoadImageFromFile'
]
