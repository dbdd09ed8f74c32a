"""Non-learned MIM targets (the pixel-regression ablation of BEiT)."""
from .patch_pixels import PatchPixels

__all__ = ['PatchPixels']
