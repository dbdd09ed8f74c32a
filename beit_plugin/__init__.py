"""BEiT v1 / v2 for the OpenMMLab stack.

``import beit_plugin`` (or ``custom_imports=dict(imports=['beit_plugin'])``
in a config) applies the fixes of :mod:`beit_plugin.compat` that this
environment needs (the upstream versions and situations that have the
faults; :func:`beit_plugin.compat.describe_active_fixes` says which) and
registers every component under the ``beit_plugin`` scope; it also lets
configs inherit the shipped ones as ``beit_plugin::<dir>/<file>.py`` bases
(:mod:`beit_plugin.package_files`).
"""
from . import compat  # noqa: F401  (first: fixes upstream packages before they are used)
from .package_files import register_config_scope
from .registry import SCOPE  # noqa: F401
from . import datasets, engine, models  # noqa: F401,E402

register_config_scope()

__version__ = '0.1.0'
