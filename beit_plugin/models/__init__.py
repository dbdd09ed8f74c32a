import mmpretrain.models  # noqa: F401  (fills the parent registry we fall back to)

from . import backbones  # noqa: F401
