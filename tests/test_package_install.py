"""``pip install .`` (not editable): the package carries the configs, tools
and demo tokenizer in ``beit_plugin/.mim``, resolves ``beit_plugin::`` config
bases, and its tools train from any working directory.

The wheel is built from the checkout and installed with ``pip --target`` into
a folder that goes first on ``PYTHONPATH``: the runs use this environment's
torch / MMEngine / ... but the installed beit_plugin, not the editable one
(whose import hook in site-packages comes after ``PYTHONPATH``).
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from beit_plugin.compat import get_installed_path
from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.package_files import DISTRIBUTION, MIM_DIR
from helpers import ROOT


# builds and installs a wheel, runs the tools in subprocesses
pytestmark = pytest.mark.slow
TOKENIZER = 'checkpoints/vqkd_demo_hog.pth'
# what a setuptools build writes into its source tree, besides *.egg-info
BUILD_OUTPUTS = ('build', 'dist')
TINY_TRAINING = [
    'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False', 'train_cfg.max_iters=2',
    'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2']
FINETUNE_CONFIG = """
_base_ = 'beit_plugin::finetune/beit_demo_finetune.py'
model = dict(backbone=dict(
    init_cfg=dict(checkpoint='work_dirs/beit_pretrain/iter_2.pth')))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
val_dataloader = dict(num_workers=0, persistent_workers=False)
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
"""
# run with the installed package: where it is, and what its bases resolve to
INSPECT_INSTALLED = textwrap.dedent("""
    import json, sys
    import beit_plugin
    from beit_plugin.compat import get_installed_path
    from mmengine.config import Config
    cfg = Config.fromfile(sys.argv[1])
    print(json.dumps(dict(
        module=beit_plugin.__file__,
        installed_path=get_installed_path('beit-plugin'),
        tokenizer=cfg.model.target_generator.init_cfg.checkpoint)))
""")


def pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, '-m', 'pip', '--disable-pip-version-check',
                    '-q', *args], cwd=cwd, check=True, timeout=300)


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    """The wheel of the checkout, installed into a folder of its own.

    It is built from a tree of links to the checkout, so that the build's
    ``build/`` and ``*.egg-info`` land there rather than in the repository.
    """
    tmp = tmp_path_factory.mktemp('package')
    source = tmp / 'source'
    source.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in BUILD_OUTPUTS and \
                not entry.name.endswith('.egg-info'):
            (source / entry.name).symlink_to(entry)
    pip('wheel', '.', '--no-deps', '--no-build-isolation', '-w',
        str(tmp / 'wheel'), cwd=source)
    wheel, = (tmp / 'wheel').glob('beit_plugin-*.whl')
    pip('install', '--no-deps', '--target', str(tmp / 'site'), str(wheel),
        cwd=tmp)
    return tmp / 'site'


def run_installed(site: Path, cwd: Path,
                  args: List[str]) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with the installed package."""
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def files(folder: Path, patterns: List[str]) -> Dict[str, bytes]:
    """Relative path -> content of the files matching ``patterns``."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for pattern in patterns for path in folder.glob(pattern)}


def loaded_checkpoints(output: str, cwd: Path) -> List[Path]:
    """The checkpoint files a run's output says it loaded (MMEngine logs
    ``load model from: X`` and/or ``Loads checkpoint ... from path: X``)."""
    found = re.findall(r'(?:load model from|backend from path): (\S+)', output)
    return sorted({(cwd / path).resolve() for path in found})


def test_wheel_carries_configs_tools_and_the_demo_tokenizer(site):
    """Every config (and metafile), every tool, the model index and the demo
    tokenizer, as in the checkout; no other checkpoint."""
    mim = site / 'beit_plugin' / '.mim'
    for folder, patterns in (('configs', ['**/*.py', '**/*.yml']),
                             ('tools', ['*.py', '*.sh'])):
        assert files(mim / folder, patterns) == \
            files(ROOT / folder, patterns), folder
    assert (mim / 'model-index.yml').read_bytes() == \
        (ROOT / 'model-index.yml').read_bytes()
    assert files(mim, ['checkpoints/*']) == files(ROOT, [TOKENIZER])


def test_installed_package_resolves_itself_and_its_config_bases(
        site, tmp_path):
    """The installed copy is imported, MMEngine finds its folder, and a
    user's config inheriting a ``beit_plugin::`` base (which inherits the
    embedded default) loads the tokenizer shipped in the package."""
    config = tmp_path / 'mine.py'
    base = 'beit_plugin::ablations/beit_demo_pretrain_random-mask.py'
    config.write_text(f'_base_ = {base!r}\n')
    result = run_installed(site, tmp_path,
                           ['-c', INSPECT_INSTALLED, str(config)])
    found = json.loads(result.stdout.splitlines()[-1])
    package = site / 'beit_plugin'
    assert Path(found['module']) == package / '__init__.py'
    assert Path(found['installed_path']) == package
    assert Path(found['tokenizer']).resolve() == \
        (package / '.mim' / TOKENIZER).resolve()


def test_installed_tools_train_from_an_empty_directory(site, tmp_path):
    """The shipped tools/train.py, run by path from an empty directory: the
    embedded default (its tokenizer from the package; data, logs and
    checkpoints under the working directory), then a user's config that
    inherits ``beit_plugin::finetune/beit_demo_finetune.py`` and starts from
    that checkpoint."""
    mim = site / 'beit_plugin' / '.mim'
    train = str(mim / 'tools' / 'train.py')
    result = run_installed(site, tmp_path, [
        train, str(mim / 'configs' / 'beit_pretrain.py'), '--cfg-options',
        *TINY_TRAINING])
    pretrain = tmp_path / 'work_dirs' / 'beit_pretrain'
    assert (pretrain / 'iter_2.pth').is_file()
    assert len(list(pretrain.glob('*/*.log'))) == 1
    assert loaded_checkpoints(result.stdout, tmp_path) == \
        [(mim / TOKENIZER).resolve()]
    assert (tmp_path / 'data' / 'demo' / 'imagenet').is_dir()

    (tmp_path / 'finetune.py').write_text(FINETUNE_CONFIG)
    result = run_installed(site, tmp_path, [train, 'finetune.py'])
    finetune = tmp_path / 'work_dirs' / 'finetune'
    assert (finetune / 'iter_2.pth').is_file()
    assert len(list(finetune.glob('*/*.log'))) == 1
    assert loaded_checkpoints(result.stdout, tmp_path) == \
        [pretrain / 'iter_2.pth']
    assert 'accuracy/top1' in result.stdout


def test_checkout_serves_the_same_from_its_own_folders(tmp_path,
                                                       monkeypatch):
    """In the checkout (editable install) ``.mim`` links to the repository's
    folders: ``beit_plugin::`` bases and the embedded default's tokenizer
    resolve there, from any working directory."""
    assert get_installed_path(DISTRIBUTION) == str(ROOT / 'beit_plugin')
    assert (MIM_DIR / 'configs').resolve() == ROOT / 'configs'
    monkeypatch.chdir(tmp_path)
    config = tmp_path / 'mine.py'
    config.write_text(
        "_base_ = 'beit_plugin::finetune/beit_demo_finetune.py'\n")
    assert Config.fromfile(config).model.type.endswith('ImageClassifier')
    tokenizer = Config.fromfile(ROOT / 'configs' / 'beit_pretrain.py') \
        .model.target_generator.init_cfg.checkpoint
    assert Path(tokenizer).resolve() == ROOT / TOKENIZER


def test_a_segmentation_base_builds_in_the_mmseg_scope(tmp_path, monkeypatch):
    """MMEngine gives a ``beit_plugin::`` base's dicts the beit_plugin scope,
    which does not reach MMSegmentation's registries: the seg configs name
    the scope of their MMSegmentation parts themselves, so one iteration and
    a validation run from a ``beit_plugin::seg/...`` base."""
    monkeypatch.chdir(tmp_path)
    make_demo_data('data/demo', cls_train=0, cls_val=0, seg_train=8,
                   seg_val=2)
    config = tmp_path / 'mine.py'
    config.write_text(
        "_base_ = 'beit_plugin::seg/beit_demo_upernet.py'\n"
        "model = dict(backbone=dict(init_cfg=None))\n"
        "train_cfg = dict(max_iters=1, val_interval=1)\n"
        "train_dataloader = dict(batch_size=2)\n")
    cfg = Config.fromfile(config)
    cfg.work_dir = str(tmp_path / 'work')
    with DefaultScope.overwrite_default_scope('mmengine'):
        runner = Runner.from_cfg(cfg)
        runner.train()
    assert runner.iter == 1
    assert 'val/mIoU' in runner.message_hub.log_scalars  # validation ran
