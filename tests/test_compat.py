"""Tests of beit_plugin.compat, of what moved out of it (checkpoint_loading,
distributed, BF16AmpOptimWrapper, the tolerant collate function) and of the
launch tools (tools/*.py, *.sh).

Each fix is tested both ways where that is possible: the upstream failure is
shown without the fix (a subprocess that does not import beit_plugin, or
MMEngine's original function), and the fixed behaviour with it; and where
the fault is absent (versions reported newer than the ones checked), the
fix is not applied and MMEngine is left as it is.
"""
import copy
import importlib.util
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import (_load_checkpoint, load_checkpoint,
                                        load_from_local)
from mmengine.utils.dl_utils import mmcv_full_available

from beit_plugin import compat  # also applies the fixes in this process
from beit_plugin import checkpoint_loading
from beit_plugin.checkpoint_loading import (UnsafeCheckpointError,
                                            safe_torch_load)
from beit_plugin.distributed import configure_cpu_distributed
from compat_toys import ToyDataset, ToyModel
from helpers import (ROOT, TOY_CONFIG, CreatesFile, free_port, load_tool,
                     make_runner, run)

CUDA = torch.cuda.is_available()
needs_mmcv_lite = pytest.mark.skipif(
    mmcv_full_available(), reason='full mmcv has compiled mmcv.ops')
needs_no_cuda = pytest.mark.skipif(CUDA, reason='tests the CPU-only path')


def run_python(code: str, cwd: Path,
               **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (no beit_plugin unless imported)."""
    return run([sys.executable, '-c', code], cwd, **env)


@pytest.fixture(autouse=True)
def _keep_default_scope() -> Iterator[None]:
    """Runners built here set MMEngine's current default scope: undo that,
    so that it does not leak into other test files."""
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


@pytest.fixture
def toy_config(tmp_path: Path) -> Path:
    path = tmp_path / 'toy_cfg.py'
    path.write_text(TOY_CONFIG)
    return path


# ---------------------------------------------------------------------------
# 1. mmcv.ops stand-in
# ---------------------------------------------------------------------------


@needs_mmcv_lite
@pytest.mark.slow
def test_mmseg_models_import_fails_without_plugin(tmp_path: Path) -> None:
    result = run_python('import mmseg.models', tmp_path)
    assert result.returncode != 0
    assert "No module named 'mmcv._ext'" in result.stderr


MMSEG_AFTER_PLUGIN = """
import beit_plugin
import mmcv.ops
import mmseg.datasets, mmseg.models, mmseg.utils
from mmseg.models.decode_heads import cc_head
assert type(mmcv.ops).__name__ == '_MmcvOpsStandIn'
assert cc_head.CrissCrossAttention is None  # its except ModuleNotFoundError
print('OK')
"""

# The order of MMSegmentation's tools/train.py: registries, then a config
# whose custom_imports bring in beit_plugin, then the models.
MMSEG_TRAIN_TOOL_ORDER = """
from mmengine.config import Config
from mmseg.registry import MODELS
cfg = Config.fromfile('cfg.py')
import mmseg.models
assert MODELS.get('EncoderDecoder') is not None
print('OK')
"""


@needs_mmcv_lite
@pytest.mark.slow
@pytest.mark.parametrize('code', [MMSEG_AFTER_PLUGIN, MMSEG_TRAIN_TOOL_ORDER],
                         ids=['import-plugin-first', 'mmseg-train-tool'])
def test_mmseg_imports_with_plugin(tmp_path: Path, code: str) -> None:
    (tmp_path / 'cfg.py').write_text(
        "custom_imports = dict(imports=['beit_plugin'])\n")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('OK')


@needs_mmcv_lite
def test_point_sample_hand_computed() -> None:
    from mmcv.ops import point_sample
    feature = torch.tensor([[[[0., 1.], [2., 3.]]]])  # 1x1x2x2
    # (x, y) in [0, 1]; pixel centres are at 0.25 and 0.75
    points = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75],
                            [0.5, 0.5]]])
    out = point_sample(feature, points)
    assert out.shape == (1, 1, 4)
    torch.testing.assert_close(out, torch.tensor([[[0., 1., 2., 1.5]]]))


def test_point_sample_matches_mmcv_source() -> None:
    """Same results as mmcv's own (pure-torch) point_sample.py source."""
    source = Path(importlib.util.find_spec('mmcv').origin).parent / 'ops' / (
        'point_sample.py')
    spec = importlib.util.spec_from_file_location('mmcv_point_sample', source)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 3, 5, 7, generator=g)
    for points in (torch.rand(2, 11, 2, generator=g),
                   torch.rand(2, 4, 6, 2, generator=g)):
        for align_corners in (False, True):
            torch.testing.assert_close(
                compat.point_sample(feature, points, align_corners),
                reference.point_sample(feature, points, align_corners))


@needs_mmcv_lite
def test_stand_in_refuses_compiled_ops() -> None:
    import mmcv.ops
    with pytest.raises(ModuleNotFoundError, match='full mmcv'):
        from mmcv.ops import nms  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match='full mmcv'):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1).long())
    assert not hasattr(mmcv.ops, '__path__')  # not a package
    with pytest.raises(ModuleNotFoundError, match="'mmcv.ops' is not a pack"):
        import mmcv.ops.nms  # noqa: F401


def test_stand_in_never_shadows_full_mmcv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a compiled mmcv._ext present, nothing is installed."""
    ext = types.ModuleType('mmcv._ext')
    ext.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    monkeypatch.setitem(sys.modules, 'mmcv._ext', ext)
    monkeypatch.delitem(sys.modules, 'mmcv.ops', raising=False)
    assert compat.install_mmcv_ops_stand_in() is False
    assert 'mmcv.ops' not in sys.modules


@needs_mmcv_lite
def test_apply_fixes_is_idempotent() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    ops = sys.modules['mmcv.ops']
    local = CheckpointLoader._schemes['']
    active = compat.active_fixes()
    assert compat.apply_fixes() == []
    assert sys.modules['mmcv.ops'] is ops
    assert CheckpointLoader._schemes[''] is local
    assert compat.active_fixes() == active


def test_stand_in_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Needed only for mmseg <= 1.2.2 and an mmcv without compiled ops."""
    versions = {'mmsegmentation': '1.2.2'}
    monkeypatch.setattr(compat, 'installed_version', versions.get)
    monkeypatch.setattr(compat, '_mmcv_lacks_compiled_ops', lambda: True)
    assert compat._mmcv_ops_stand_in_needed()
    versions['mmsegmentation'] = '1.3.0'  # a release after the fault
    assert not compat._mmcv_ops_stand_in_needed()
    del versions['mmsegmentation']  # no mmseg: nothing imports mmcv.ops
    assert not compat._mmcv_ops_stand_in_needed()
    versions['mmsegmentation'] = '1.2.2'
    monkeypatch.setattr(compat, '_mmcv_lacks_compiled_ops', lambda: False)
    assert not compat._mmcv_ops_stand_in_needed()  # full mmcv


# ---------------------------------------------------------------------------
# The table: gates, the log line, nothing changed where no fault
# ---------------------------------------------------------------------------


def test_every_fix_names_its_fault() -> None:
    names = [fix.name for fix in compat.FIXES]
    assert len(set(names)) == len(names)
    for fix in compat.FIXES:
        assert fix.upstream and callable(fix.needed) and callable(fix.apply)
    assert set(compat.active_fixes()) <= set(names)


def test_active_fixes_line() -> None:
    line = compat.describe_active_fixes()
    assert line.startswith('beit_plugin upstream fixes active: ')
    assert '\n' not in line
    for fix in compat.FIXES:
        assert (f'{fix.name} ({fix.upstream})' in line) == (
            fix.name in compat.active_fixes())
    # mmengine 0.10.7: its checkpoint loaders and registry lookup have the
    # faults on any torch
    if compat.has_checked_fault('mmengine'):
        assert {'local_checkpoints_weights_only',
                'remote_checkpoints_weights_only',
                'scope_prefix_from_any_scope'} <= set(compat.active_fixes())


@pytest.mark.parametrize('version, needed', [('0.10.7', True),
                                             ('0.10.3', True),
                                             ('0.11.0', False)])
def test_mmengine_gates(version: str, needed: bool,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {'mmengine': version}
    monkeypatch.setattr(compat, 'installed_version', versions.get)
    assert compat._mmengine_checkpoint_fault() is needed
    monkeypatch.setattr(compat, '_pkg_resources_available', lambda: False)
    assert compat._package_helpers_needed() is needed
    monkeypatch.setattr(compat, '_pkg_resources_available', lambda: True)
    assert not compat._package_helpers_needed()  # setuptools < 81
    monkeypatch.setattr(compat, '_editable_install', lambda: True)
    assert compat._editable_scope_needed() is needed
    monkeypatch.setattr(compat, '_editable_install', lambda: False)
    assert not compat._editable_scope_needed()


# MMEngine and mmcv reported newer than the versions with their faults
# (mmcv and mmcv-lite alike: only the metadata is asked). (mmseg stays
# as installed: the plugin imports mmseg.datasets, which needs the mmcv.ops
# stand-in with mmcv-lite; test_stand_in_gate covers that gate.)
NO_FAULT = """
import importlib.metadata
real_version = importlib.metadata.version
NEWER = {'mmengine': '0.11.0', 'mmcv': '2.3.0', 'mmcv-lite': '2.3.0'}
importlib.metadata.version = lambda name: NEWER.get(name) or real_version(name)

from mmengine.registry import MODELS
from mmengine.runner import checkpoint as ckpt
from mmengine.utils import package_utils
before = dict(ckpt.CheckpointLoader._schemes)
helpers = (package_utils.is_installed, package_utils.get_installed_path)
import mmcv
hue = mmcv.adjust_hue
import beit_plugin
from beit_plugin import compat
from mmengine.utils.dl_utils import mmcv_full_available
expected = [] if mmcv_full_available() else ['mmcv_ops_stand_in']
assert compat.active_fixes() == expected, compat.active_fixes()
assert ckpt.CheckpointLoader._schemes == before
assert ckpt.CheckpointLoader._schemes[''] is ckpt.load_from_local
assert (package_utils.is_installed,
        package_utils.get_installed_path) == helpers
assert 'beit_plugin' not in MODELS.children
assert mmcv.adjust_hue is hue and mmcv.image.photometric.adjust_hue is hue
print('OK')
"""


@pytest.mark.slow
def test_nothing_changes_where_no_fault(tmp_path: Path) -> None:
    """With MMEngine reported newer than the versions with the faults,
    importing the plugin changes nothing of MMEngine's."""
    result = run_python(NO_FAULT, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('OK')


def test_scope_prefix_fault_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry nested below MMPretrain's is not found by its scope
    prefix from MMEngine's root until it is the root's child."""
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import Registry
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    probe = Registry('model', parent=MMPRETRAIN_MODELS, scope='compat_probe')
    monkeypatch.delitem(MMPRETRAIN_MODELS._children, 'compat_probe')

    @probe.register_module()
    class Probe(nn.Module):
        pass

    assert ROOT_MODELS.get('compat_probe.Probe') is None  # the fault
    monkeypatch.setitem(ROOT_MODELS._children, 'compat_probe', probe)
    assert ROOT_MODELS.get('compat_probe.Probe') is Probe
    from beit_plugin.registry import MODELS
    assert ROOT_MODELS.get('beit_plugin.BEiT') is MODELS.get('BEiT')


def test_own_package_answer_defers_to_mmengine() -> None:
    calls = []

    def original(package: str) -> str:
        calls.append(package)
        return f'/upstream/{package}'

    wrapped = compat.answer_for_own_package(original)
    assert wrapped('mmpretrain') == '/upstream/mmpretrain'
    assert wrapped('beit-plugin') == str(ROOT / 'beit_plugin')
    assert calls == ['mmpretrain']
    assert compat.answer_for_own_package(wrapped) is wrapped


def test_names_moved_out_of_compat_still_import() -> None:
    from beit_plugin.engine.optimizers import BF16AmpOptimWrapper
    assert compat.safe_torch_load is checkpoint_loading.safe_torch_load
    assert (compat.UnsafeCheckpointError
            is checkpoint_loading.UnsafeCheckpointError)
    assert compat.BF16AmpOptimWrapper is BF16AmpOptimWrapper
    assert compat.configure_cpu_distributed is configure_cpu_distributed
    with pytest.raises(AttributeError):
        compat.no_such_name


# ---------------------------------------------------------------------------
# 2. checkpoints
# ---------------------------------------------------------------------------


class RecordStartHook(Hook):
    """Records the iteration and optimizer state a training run starts at."""

    def before_train(self, runner) -> None:
        self.iter = runner.iter
        self.optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Work dir of a finished toy run: iter_1.pth to iter_4.pth."""
    work_dir = tmp_path_factory.mktemp('trained')
    with DefaultScope.overwrite_default_scope('mmengine'):
        make_runner(work_dir).train()
    return work_dir


def test_runner_checkpoint_needs_the_allowlist(trained: Path) -> None:
    ckpt = str(trained / 'iter_2.pth')
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(ckpt)) == {
        'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr',
        'numpy.dtype', 'numpy._core.multiarray._reconstruct', 'numpy.ndarray',
        'numpy._core.multiarray.scalar'
    }
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        load_from_local(ckpt, 'cpu')  # MMEngine's own loader
    ckpt_dict = _load_checkpoint(ckpt, map_location='cpu')  # ours
    assert isinstance(ckpt_dict['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


def test_resume_continues_where_it_stopped(trained: Path,
                                           tmp_path: Path) -> None:
    record = RecordStartHook()
    runner = make_runner(
        tmp_path,
        load_from=str(trained / 'iter_2.pth'),
        resume=True,
        custom_hooks=[record])
    runner.train()
    saved = safe_torch_load(trained / 'iter_2.pth', 'cpu')
    assert record.iter == 2
    torch.testing.assert_close(record.optimizer['state'],
                               saved['optimizer']['state'])
    uninterrupted = safe_torch_load(trained / 'iter_4.pth', 'cpu')
    torch.testing.assert_close(runner.model.state_dict(),
                               uninterrupted['state_dict'])


def test_load_from_and_pretrained_init(trained: Path, tmp_path: Path) -> None:
    ckpt = str(trained / 'iter_4.pth')
    expected = safe_torch_load(ckpt, 'cpu')['state_dict']
    runner = make_runner(tmp_path, load_from=ckpt)
    runner.load_or_resume()
    torch.testing.assert_close(runner.model.state_dict(), expected)
    model = ToyModel()
    model.init_cfg = dict(type='Pretrained', checkpoint=ckpt)
    model.init_weights()
    torch.testing.assert_close(model.state_dict(), expected)


class ReachesAttribute:
    """Unpickling it calls ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_code_running_checkpoint_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save(
        dict(state_dict=ToyModel().state_dict(), meta=CreatesFile(marker)),
        evil)
    # even when the environment asks torch not to load weights only
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(ToyModel(), str(evil), map_location='cpu')
    assert str(evil) in str(err.value)
    assert 'weights_only=True' in str(err.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live
    assert marker.exists()


def test_only_history_buffer_statistics_getattr(tmp_path: Path) -> None:
    sneaky = tmp_path / 'sneaky.pth'
    torch.save(dict(meta=ReachesAttribute()), sneaky)
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        safe_torch_load(sneaky)


def test_safe_load_leaves_torch_allowlist_as_found(trained: Path) -> None:
    with torch.serialization.safe_globals([np.ndarray]):  # a user's own
        safe_torch_load(trained / 'iter_2.pth')
        allowed = torch.serialization.get_safe_globals()
        assert np.ndarray in allowed and HistoryBuffer not in allowed


# ---------------------------------------------------------------------------
# 3. AMP on CPU
# ---------------------------------------------------------------------------


@needs_no_cuda
def test_amp_optim_wrapper_needs_a_gpu() -> None:
    from mmengine.optim import AmpOptimWrapper
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(AssertionError, match='only available training on gpu'):
        AmpOptimWrapper(optimizer=optimizer, dtype='bfloat16')


def test_bf16_optim_wrapper_trains_in_bfloat16() -> None:
    from mmpretrain.registry import OPTIM_WRAPPERS
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    wrapper = OPTIM_WRAPPERS.build(
        dict(
            type='beit_plugin.BF16AmpOptimWrapper',
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(model.weight, before)


# ---------------------------------------------------------------------------
# 4. numpy 2: the metrics on BEiT's path work unchanged
# ---------------------------------------------------------------------------


def test_accuracy_and_iou_metrics_on_numpy_2() -> None:
    from mmpretrain.evaluation import Accuracy
    from mmseg.evaluation import IoUMetric
    if np.lib.NumpyVersion(np.__version__) >= '2.4.0':
        assert not hasattr(np, 'in1d')  # only retrieval metrics need it
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    top1 = Accuracy.calculate(scores, torch.tensor([0, 1, 1]), topk=(1, ))
    assert top1[0][0].item() == pytest.approx(200 / 3)
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [0, 255]])
    areas = IoUMetric.intersect_and_union(pred, label, 2, 255)
    metrics = IoUMetric.total_area_to_metrics(*areas, ['mIoU'])
    np.testing.assert_allclose(metrics['IoU'], [0.5, 0.5])


needs_hue_fix = pytest.mark.skipif(
    'adjust_hue_numpy2' not in compat.active_fixes(),
    reason='mmcv without the adjust_hue fault, or numpy < 2')
HUE_IMG = np.random.RandomState(0).randint(0, 256, (6, 7, 3)).astype(np.uint8)


def hue_by_hand(img: np.ndarray, shift: int, backend: str) -> np.ndarray:
    """mmcv's hue shift (BGR -> HSV, hue + shift, back) with the uint8
    wraparound written out: NumPy 1's ``np.uint8(hue_factor * 255)`` is the
    product truncated toward zero, modulo 256."""
    if backend == 'cv2':
        import cv2
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 256
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)
    from PIL import Image
    rgb = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
    hsv = np.array(rgb.convert('HSV'))
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 256
    channels = [Image.fromarray(np.ascontiguousarray(hsv[..., i]))
                for i in range(3)]
    return np.array(Image.merge('HSV', channels).convert('RGB'))[..., ::-1]


@needs_hue_fix
@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_mmcv_adjust_hue_fault(backend: str) -> None:
    """mmcv's own adjust_hue fails for a negative factor on numpy 2 (and
    is right for a positive one)."""
    upstream = compat.UPSTREAM_ADJUST_HUE['mmcv']
    with pytest.raises(OverflowError, match='out of bounds for uint8'):
        upstream(HUE_IMG, -0.1, backend=backend)
    np.testing.assert_array_equal(upstream(HUE_IMG, 0.1, backend=backend),
                                  compat.adjust_hue(HUE_IMG, 0.1, backend))


# (hue factor, NumPy 1's np.uint8(hue_factor * 255) as a signed shift:
# -25.5 -> -25 (uint8 231), 12.75 -> 12, 25.5 -> 25; checked against
# numpy 1.26.4)
@needs_hue_fix
@pytest.mark.parametrize('hue_factor, shift', [(-0.1, -25), (0.05, 12),
                                               (0.1, 25), (-0.5, -127)])
@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_adjust_hue_fixed_as_numpy_1(hue_factor: float, shift: int,
                                     backend: str) -> None:
    import mmcv
    expected = hue_by_hand(HUE_IMG, shift, backend)
    assert not np.array_equal(expected, HUE_IMG)
    actual = mmcv.adjust_hue(HUE_IMG, hue_factor, backend=backend)
    assert actual.dtype == np.uint8
    np.testing.assert_array_equal(actual, expected)


@needs_hue_fix
def test_adjust_hue_replaced_where_looked_up_only() -> None:
    import mmcv
    import mmcv.image
    from mmcv.image import photometric
    from mmpretrain.datasets.transforms import processing
    assert set(compat.UPSTREAM_ADJUST_HUE) == {
        'mmcv', 'mmcv.image', 'mmcv.image.photometric'}
    for module in (mmcv, mmcv.image, photometric):
        assert module.adjust_hue is compat.adjust_hue
    # ColorJitter calls mmcv.adjust_hue; no other binding of its own
    assert processing.mmcv is mmcv
    assert not hasattr(processing, 'adjust_hue')
    # the other photometric functions are mmcv's
    assert mmcv.adjust_color.__module__ == 'mmcv.image.photometric'
    with pytest.raises(ValueError, match='not in'):
        mmcv.adjust_hue(HUE_IMG, 0.6)
    compat.replace_adjust_hue()  # again: the upstream ones are kept
    assert compat.UPSTREAM_ADJUST_HUE['mmcv'] is not compat.adjust_hue


@needs_hue_fix
def test_color_jitter_with_hue_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """MMPretrain's ColorJitter(hue=0.1), as the iBOT configs have it: both
    signs of the factor are drawn, none fails."""
    import mmcv
    from mmpretrain.datasets.transforms import ColorJitter
    hues = []

    def recording(img, hue_factor, backend=None):
        hues.append(hue_factor)
        return compat.adjust_hue(img, hue_factor, backend)

    monkeypatch.setattr(mmcv, 'adjust_hue', recording)
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2,
                         hue=0.1)
    np.random.seed(0)
    for _ in range(16):
        out = jitter(dict(img=HUE_IMG.copy()))['img']
        assert out.shape == HUE_IMG.shape and out.dtype == np.uint8
    assert len(hues) == 16 and min(hues) < 0 < max(hues)


@pytest.mark.parametrize('versions, needed', [
    ({'mmcv-lite': '2.1.0', 'numpy': '2.4.6'}, True),
    ({'mmcv': '2.2.0', 'numpy': '2.0.0'}, True),
    ({'mmcv': '2.0.0rc4', 'numpy': '2.1.0'}, True),
    ({'mmcv-lite': '2.1.0', 'numpy': '1.26.4'}, False),  # np.uint8 wraps
    ({'mmcv-lite': '2.3.0', 'numpy': '2.4.6'}, False),  # after checked
    ({'mmcv': '1.7.2', 'numpy': '2.4.6'}, False),  # mmcv 1: not ours
    ({'numpy': '2.4.6'}, False),
])
def test_adjust_hue_gate(versions: Dict[str, str], needed: bool,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, 'installed_version', versions.get)
    assert compat._adjust_hue_needed() is needed


# ---------------------------------------------------------------------------
# 5. distributed on CPU
# ---------------------------------------------------------------------------

# the plugin leaves MMEngine's init_dist as it is: the fault stays
INIT_DIST = """
import beit_plugin
from mmengine.dist import init_dist
init_dist('pytorch', backend='gloo')
"""

INIT_DIST_ALL_LAUNCHERS = """
import os
import torch
from mmengine.config import Config
from beit_plugin.distributed import init_distributed
import torch.distributed as dist
for launcher in ('pytorch', 'mpi', 'slurm'):
    cfg = Config(dict(launcher=launcher,
                      env_cfg=dict(dist_cfg=dict(backend='gloo'))))
    assert init_distributed(cfg)
    assert not init_distributed(cfg)  # already initialised
    assert dist.get_world_size() == 1 and dist.get_backend() == 'gloo'
    if launcher == 'pytorch':  # why tools set device_ids=None on CPU
        try:
            torch.nn.parallel.DistributedDataParallel(
                torch.nn.Linear(2, 2), device_ids=[0])
        except ValueError as err:
            assert 'device_ids' in str(err)
        else:
            raise AssertionError('DDP accepted device_ids for a CPU module')
        torch.nn.parallel.DistributedDataParallel(
            torch.nn.Linear(2, 2), device_ids=None)
    dist.destroy_process_group()
print('OK')
"""


def single_process_dist_env() -> Dict[str, str]:
    """Environment of rank 0 of 1 for the pytorch, mpi and slurm launchers."""
    return dict(
        RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(free_port()), OMPI_COMM_WORLD_LOCAL_RANK='0',
        OMPI_COMM_WORLD_RANK='0', OMPI_COMM_WORLD_SIZE='1', SLURM_PROCID='0',
        SLURM_NTASKS='1', SLURM_NODELIST='localhost', SLURM_LOCALID='0')


@needs_no_cuda
def test_init_dist_fails_on_cpu_without_the_tools(tmp_path: Path) -> None:
    result = run_python(INIT_DIST, tmp_path, **single_process_dist_env())
    assert result.returncode != 0
    assert 'NVIDIA driver' in result.stderr


@needs_no_cuda
@pytest.mark.slow
def test_init_dist_on_cpu_as_the_tools_do(tmp_path: Path) -> None:
    result = run_python(INIT_DIST_ALL_LAUNCHERS, tmp_path,
                        **single_process_dist_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('OK')


@pytest.mark.slow
def test_dist_train_two_processes(toy_config: Path, tmp_path: Path) -> None:
    """``bash tools/dist_train.sh CONFIG 2``: gloo/DDP on CPU, synced ranks."""
    work_dir = tmp_path / 'dist'
    result = run([
        'bash',
        str(ROOT / 'tools' / 'dist_train.sh'),
        str(toy_config), '2', '--work-dir',
        str(work_dir)
    ],
                 tmp_path,
                 PORT=str(free_port()),
                 PYTHON=sys.executable)
    assert result.returncode == 0, (result.stdout[-2000:] +
                                    result.stderr[-3000:])
    ranks = [
        torch.load(work_dir / f'params_rank{r}.pth', weights_only=True)
        for r in (0, 1)
    ]
    assert [r['world_size'] for r in ranks] == [2, 2]
    torch.testing.assert_close(ranks[0]['state_dict'], ranks[1]['state_dict'],
                               rtol=0, atol=0)


# ---------------------------------------------------------------------------
# tools/train.py and tools/test.py
# ---------------------------------------------------------------------------


@pytest.fixture
def train_tool(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it otherwise
    return load_tool('train')


def test_train_cli_reaches_config(train_tool: types.ModuleType,
                                  toy_config: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(toy_config.parent)
    args = train_tool.parse_args([
        str(toy_config), '--resume', '--auto-scale-lr', '--cfg-options',
        'train_cfg.max_iters=7', 'optim_wrapper.optimizer.lr=0.5',
        'default_hooks.checkpoint.interval=3'
    ])
    cfg = train_tool.build_config(args)
    assert cfg.train_cfg.max_iters == 7
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.default_hooks.checkpoint.interval == 3
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.auto_scale_lr.enable is True
    assert cfg.work_dir == os.path.join('./work_dirs', 'toy_cfg')
    assert cfg.launcher == 'none' and cfg.get('model_wrapper_cfg') is None

    args = train_tool.parse_args(
        [str(toy_config), '--resume', 'ck.pth', '--work-dir', 'wd'])
    cfg = train_tool.build_config(args)
    assert (cfg.resume, cfg.load_from, cfg.work_dir) == (True, 'ck.pth', 'wd')


def test_train_tool_respects_runner_type(train_tool: types.ModuleType,
                                         toy_config: Path,
                                         tmp_path: Path) -> None:
    from compat_toys import ToyRunner
    cases = [([], Runner), (['runner_type=compat_toys.ToyRunner'], ToyRunner)]
    for options, runner_type in cases:
        args = train_tool.parse_args([
            str(toy_config), '--work-dir',
            str(tmp_path), '--cfg-options',
            f'experiment_name={runner_type.__name__}', *options
        ])
        runner = train_tool.build_runner(train_tool.build_config(args))
        assert type(runner) is runner_type


@needs_no_cuda
def test_train_cli_adapts_to_cpu(train_tool: types.ModuleType,
                                 toy_config: Path) -> None:
    args = train_tool.parse_args(
        [str(toy_config), '--amp', '--launcher', 'pytorch'])
    cfg = train_tool.build_config(args)
    assert cfg.optim_wrapper.type == 'beit_plugin.BF16AmpOptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None


@needs_no_cuda
def test_cpu_distributed_turns_sync_bn_into_bn() -> None:
    norm = dict(type='SyncBN', requires_grad=True)
    cfg = Config(dict(
        launcher='pytorch', sync_bn='torch',
        model=dict(type='X', head=dict(norm_cfg=norm),
                   necks=[dict(norm_cfg=dict(norm)), dict(type='Y')])))
    configure_cpu_distributed(cfg)
    assert cfg.model.head.norm_cfg == dict(type='BN', requires_grad=True)
    assert cfg.model.necks[0].norm_cfg.type == 'BN'
    assert 'sync_bn' not in cfg
    untouched = Config(dict(launcher='none', sync_bn='torch',
                            model=dict(norm_cfg=dict(norm))))
    configure_cpu_distributed(untouched)  # not distributed: as it was
    assert untouched.model.norm_cfg.type == 'SyncBN'
    assert untouched.sync_bn == 'torch'


def test_missing_checkpoint_hint(train_tool: types.ModuleType,
                                 monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    """The backbone names the missing file; tools/train.py adds the
    command that writes it (this repository's configs/)."""
    monkeypatch.chdir(ROOT)
    path = 'work_dirs/beit_pretrain/no_such_iter.pth'
    error = FileNotFoundError(f'init_cfg checkpoint {path} does not exist')
    error.checkpoint = path
    hinted = train_tool.with_checkpoint_hint(error)
    assert str(hinted) == (
        f'init_cfg checkpoint {path} does not exist: it is written by '
        '`python tools/train.py configs/beit_pretrain.py`')
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths in full
    assert f'python {ROOT}/tools/train.py {ROOT}/configs/beit_pretrain.py' \
        in str(train_tool.with_checkpoint_hint(error))
    other = FileNotFoundError('x.pth does not exist')
    other.checkpoint = str(tmp_path / 'x.pth')
    assert train_tool.with_checkpoint_hint(other) is other
    assert train_tool.with_checkpoint_hint(FileNotFoundError('y')).args == (
        'y', )


@pytest.mark.parametrize('hook, expected', [
    ("dict(type='VisualizationHook', enable=False)",
     dict(enable=True, out_dir='vis')),
    ("dict(type='SegVisualizationHook', draw=False)", dict(draw=True)),
])
def test_test_cli_show_dir(toy_config: Path, hook: str, expected: Dict,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it otherwise
    with open(toy_config, 'a') as f:
        f.write(f'default_hooks.update(visualization={hook})\n'
                "visualizer = dict(type='Visualizer')\n")
    test_tool = load_tool('test')
    cfg = test_tool.build_config(
        test_tool.parse_args([
            str(toy_config), 'ck.pth', '--show-dir', 'vis', '--cfg-options',
            'test_dataloader.batch_size=1'
        ]))
    assert cfg.load_from == 'ck.pth'
    assert cfg.test_dataloader.batch_size == 1
    for key, value in expected.items():
        assert cfg.default_hooks.visualization[key] == value
    if 'draw' in expected:  # MMSegmentation saves via the visualizer
        assert cfg.visualizer.save_dir == 'vis'


@pytest.mark.slow
def test_train_and_test_tools_end_to_end(
        toy_config: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``python tools/train.py CONFIG --amp``, then tools/test.py on it."""
    monkeypatch.setenv('LOCAL_RANK', '0')  # test.py's parse_args sets it
    result = run(
        [sys.executable,
         str(ROOT / 'tools' / 'train.py'),
         str(toy_config), '--amp'], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    work_dir = tmp_path / 'work_dirs' / 'toy_cfg'  # the default work dir
    assert (work_dir / 'iter_4.pth').is_file()
    if not CUDA:
        assert 'bfloat16 autocast' in result.stdout + result.stderr
    assert 'beit_plugin upstream fixes active: ' in result.stdout

    test_tool = load_tool('test')
    out = tmp_path / 'preds.pkl'
    metrics = test_tool.main([
        str(toy_config),
        str(work_dir / 'iter_4.pth'), '--work-dir',
        str(tmp_path / 'test'), '--out',
        str(out)
    ])
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == len(ToyDataset())
    # the metric of the trained weights, computed here by hand
    weights = safe_torch_load(work_dir / 'iter_4.pth')['state_dict']
    model = ToyModel()
    model.load_state_dict(weights)
    dataset = ToyDataset()
    with torch.no_grad():
        hits = [int(model(s['inputs'][None]).argmax()) == int(s['label'])
                for s in map(dataset.__getitem__, range(len(dataset)))]
    assert metrics['accuracy'] == pytest.approx(sum(hits) / len(hits))


# ---------------------------------------------------------------------------
# ``_scope_`` in an inherited collate_fn
# ---------------------------------------------------------------------------

INHERITS = (
    "_base_ = 'mmpretrain::_base_/datasets/imagenet_bs256_beitv2.py'\n"
    "train_dataloader = dict(batch_size=2, num_workers=0,\n"
    "    persistent_workers=False,{collate}\n"
    "    dataset=dict(_delete_=True, type='compat_toys.ToyDataset'))\n")


def test_inherited_collate_fn_builds(tmp_path: Path) -> None:
    """A dataloader from an ``mmpretrain::`` base carries
    ``collate_fn=dict(type='default_collate', _scope_='mmpretrain')``:
    MMEngine's Runner fails on it (the plugin leaves it so); with
    ``type='beit_plugin.default_collate'`` it builds."""
    upstream, ours = tmp_path / 'upstream.py', tmp_path / 'ours.py'
    upstream.write_text(INHERITS.format(collate=''))
    ours.write_text(INHERITS.format(
        collate="\n    collate_fn=dict(type='beit_plugin.default_collate'),"))
    cfg = Config.fromfile(upstream)
    assert cfg.train_dataloader.collate_fn['_scope_'] == 'mmpretrain'
    with pytest.raises(TypeError, match='_scope_'):
        next(iter(Runner.build_dataloader(copy.deepcopy(
            cfg.train_dataloader))))
    cfg = Config.fromfile(ours)
    assert cfg.train_dataloader.collate_fn == dict(
        type='beit_plugin.default_collate', _scope_='mmpretrain')
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    assert batch['inputs'].shape == (2, 4)


def test_shipped_configs_name_the_tolerant_collate() -> None:
    cfg = Config.fromfile(ROOT / 'configs' / 'beit_pretrain.py')
    assert cfg.train_dataloader.collate_fn.type == \
        'beit_plugin.default_collate'
