"""The files beit_plugin ships beside its code, and the ``beit_plugin::``
config scope that reaches them.

Like the OpenMMLab packages, beit_plugin carries a ``.mim`` folder inside the
package: ``configs/``, ``tools/``, ``model-index.yml`` and the demo tokenizer
``checkpoints/vqkd_demo_hog.pth`` that the embedded default config loads. In a
checkout (and so in an editable install) ``beit_plugin/.mim/*`` are relative
symlinks to the repository's folders; a wheel built by ``setup.py`` holds
copies of them (``package_data``), so ``pip install .`` works without the
repository.

MMEngine resolves a config base ``'<scope>::<dir>/<file>.py'`` to
``<installed package>/.mim/configs/<dir>/<file>.py``, but only for the scopes
in its table ``mmengine.config.utils.MODULE2PACKAGE`` (OpenMMLab's own
packages). :func:`register_config_scope` adds our own entry, so that a user's
config can say ``_base_ = 'beit_plugin::finetune/beit_demo_finetune.py'``.
A config's bases are resolved before its ``custom_imports`` run, so the
process must import ``beit_plugin`` before ``Config.fromfile`` (our tools
do). MMEngine also needs the path to name a folder (``beit_plugin::x.py``
is refused); the embedded default, ``configs/beit_pretrain.py``, is reached as
``beit_plugin::ablations/../beit_pretrain.py`` or by its path,
:data:`MIM_DIR` ``/ 'configs/beit_pretrain.py'``. And MMEngine gives the
components of such a base the ``beit_plugin`` scope, which reaches
MMPretrain's registries but not MMSegmentation's: our segmentation configs
therefore give their MMSegmentation dicts ``_scope_='mmseg'``.
"""
from pathlib import Path

from mmengine.config import utils as config_utils

#: The config scope (``beit_plugin::``) and the distribution that serves it.
CONFIG_SCOPE = 'beit_plugin'
DISTRIBUTION = 'beit-plugin'

#: ``.mim`` of the imported beit_plugin: configs/, tools/, checkpoints/.
MIM_DIR = Path(__file__).resolve().parent / '.mim'


def register_config_scope() -> None:
    """Let MMEngine resolve ``beit_plugin::`` config bases (see module doc).

    MMEngine finds the package's folder with ``get_installed_path`` of the
    distribution; :mod:`beit_plugin.compat` makes it find an editable
    install too (MMEngine <= 0.10.7 looks beside the metadata).
    """
    config_utils.MODULE2PACKAGE[CONFIG_SCOPE] = DISTRIBUTION
