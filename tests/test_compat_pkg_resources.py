"""compat fix package_helpers_without_pkg_resources: configs inherit
`mmpretrain::` bases without pkg_resources (setuptools >= 81)."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys

    class HidePkgResources:  # setuptools >= 81 ships no pkg_resources
        def find_spec(self, name, path=None, target=None):
            if name == 'pkg_resources' or name.startswith('pkg_resources.'):
                raise ModuleNotFoundError("No module named 'pkg_resources'")

    sys.meta_path.insert(0, HidePkgResources())
    sys.modules.pop('pkg_resources', None)
    if sys.argv[1] == 'plugin':
        import beit_plugin  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(sys.argv[2])
    print('loaded', cfg.optim_wrapper.type)
""")


def run(tmp_path, mode: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("_base_ = ['mmpretrain::_base_/default_runtime.py']\n"
                   "optim_wrapper = dict(type='OptimWrapper')\n")
    return subprocess.run([sys.executable, '-c', SCRIPT, mode, str(cfg)],
                          capture_output=True, text=True, timeout=120)


def test_scoped_base_fails_upstream_without_pkg_resources(tmp_path):
    result = run(tmp_path, 'plain')
    assert result.returncode != 0
    assert "No module named 'pkg_resources'" in result.stderr


@pytest.mark.slow
def test_scoped_base_loads_with_the_plugin(tmp_path):
    result = run(tmp_path, 'plugin')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'loaded OptimWrapper' in result.stdout


def test_installed_path_helpers_agree_with_the_import_system():
    import importlib.util
    import os

    from beit_plugin.compat import get_installed_path, is_installed
    assert is_installed('mmpretrain') and not is_installed('no-such-pkg-x')
    assert get_installed_path('mmpretrain') == os.path.dirname(
        importlib.util.find_spec('mmpretrain').origin)
