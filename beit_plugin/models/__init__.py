import mmpretrain.models  # noqa: F401  (fills the parent registry we fall back to)

from . import (algorithms, backbones, heads, necks, targets,  # noqa: F401
               tokenizers)
