import mmpretrain.datasets  # noqa: F401  (fills the parent registries we fall back to)

from . import transforms  # noqa: F401
from .collate import default_collate  # noqa: F401
from .demo_datasets import DemoADE20K, DemoImageNet  # noqa: F401
