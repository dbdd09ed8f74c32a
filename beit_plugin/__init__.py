"""BEiT v1 / v2 for the OpenMMLab stack.

``import beit_plugin`` (or ``custom_imports=dict(imports=['beit_plugin'])`` in a
config) applies the compatibility fixes of :mod:`beit_plugin.compat` and
registers every component under the ``beit_plugin`` scope.
"""
from . import compat  # noqa: F401  (first: fixes upstream packages before they are used)
from .checkpoint_schemes import register_weights_only_remote_loaders
from .registry import SCOPE  # noqa: F401
from . import datasets, engine, models  # noqa: F401,E402

register_weights_only_remote_loaders()

__version__ = '0.1.0'
