import mmpretrain.engine  # noqa: F401  (fills the parent registries we fall back to)

from . import hooks, optimizers  # noqa: F401
