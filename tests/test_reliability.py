"""Nothing trains on garbage, nothing is lost: NonFiniteCheckHook,
AtomicCheckpointHook and the truncated-checkpoint error of safe_torch_load.

Toy runners (a 4-feature linear classifier, 2 samples a batch) train a few
iterations each; one test kills a training process with SIGKILL while it
writes a checkpoint.
"""
import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Collection, Dict, Iterator, List, Optional
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_checkpoint

from beit_plugin import checkpoint_loading
from beit_plugin.checkpoint_loading import NotACheckpointError, safe_torch_load
from compat_toys import ToyDataset, ToyModel
from helpers import TESTS, make_runner, mmengine_log

ATOMIC = 'beit_plugin.AtomicCheckpointHook'


@pytest.fixture(autouse=True)
def _keep_default_scope() -> Iterator[None]:
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


class TwoTermModel(ToyModel):
    """The toy classifier with a second loss term, ``loss_mim``, which goes
    bad at the given training iterations (1-based): its value NaN
    (``nan_loss_at``), or its value finite and its gradient NaN
    (``nan_grad_at``: ``sqrt(0 * w)`` is 0, its derivative ``inf * 0``)."""

    def __init__(
        self,
        nan_loss_at: Collection[int] = (),
        nan_grad_at: Collection[int] = ()
    ) -> None:
        super().__init__()
        self.nan_loss_at = set(nan_loss_at)
        self.nan_grad_at = set(nan_grad_at)
        self.iteration = 0

    def forward(self,
                inputs: torch.Tensor,
                label: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        if mode != 'loss':
            return super().forward(inputs, label, mode)
        self.iteration += 1
        logits = self.fc(inputs).float()
        loss_mim = 0.1 * (logits**2).mean()
        if self.iteration in self.nan_loss_at:
            loss_mim = loss_mim * float('nan')
        if self.iteration in self.nan_grad_at:
            loss_mim = loss_mim + torch.sqrt(0 * self.fc.weight.sum())
        return dict(loss_cls=F.cross_entropy(logits, label), loss_mim=loss_mim)


class Snapshots(Hook):
    """Copies of the weights and optimizer state after every iteration."""
    priority = 'LOWEST'

    def __init__(self) -> None:
        self.weights: Dict[int, dict] = {}
        self.optimizer: Dict[int, dict] = {}

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        self.weights[runner.iter + 1] = copy.deepcopy(
            runner.model.state_dict())
        self.optimizer[runner.iter + 1] = copy.deepcopy(
            runner.optim_wrapper.state_dict())


class StartIteration(Hook):
    """The iteration a training run starts (or resumes) at."""

    def before_train(self, runner) -> None:
        self.iter = runner.iter


def checkpoints(work_dir: Path) -> List[str]:
    return sorted(p.name for p in work_dir.glob('*.pth'))


def assert_all_finite(work_dir: Path) -> None:
    """Every checkpoint on disk loads and holds finite weights only."""
    for name in checkpoints(work_dir):
        state = safe_torch_load(work_dir / name, 'cpu')['state_dict']
        for key, tensor in state.items():
            assert torch.isfinite(tensor).all(), f'{name}: {key}'


# ---------------------------------------------------------------------------
# non-finite loss and gradients
# ---------------------------------------------------------------------------


def test_stop_names_iteration_and_term(tmp_path: Path) -> None:
    runner = make_runner(
        tmp_path,
        TwoTermModel(nan_loss_at={3}),
        custom_hooks=[dict(type='beit_plugin.NonFiniteCheckHook')])
    with pytest.raises(FloatingPointError) as info:
        runner.train()
    message = str(info.value)
    assert message.startswith(
        'non-finite loss (loss_mim=nan) at iteration 3: training stopped')
    assert 'loss_cls' not in message
    assert checkpoints(tmp_path) == ['iter_1.pth', 'iter_2.pth']
    assert_all_finite(tmp_path)


def test_stop_on_gradient_norm(tmp_path: Path) -> None:
    runner = make_runner(
        tmp_path,
        TwoTermModel(nan_grad_at={2}),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1),
                           clip_grad=dict(max_norm=1.0)),
        custom_hooks=[dict(type='beit_plugin.NonFiniteCheckHook')])
    with pytest.raises(FloatingPointError,
                       match=r'^non-finite gradient norm \(grad_norm=nan\) '
                       r'at iteration 2: training stopped'):
        runner.train()
    assert checkpoints(tmp_path) == ['iter_1.pth']
    assert_all_finite(tmp_path)


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    # finite loss, NaN gradient, no clip_grad: no gradient norm to read, the
    # step makes fc.weight NaN, and the checkpoint of iteration 2 is refused
    runner = make_runner(
        tmp_path,
        TwoTermModel(nan_grad_at={2}),
        custom_hooks=[dict(type='beit_plugin.NonFiniteCheckHook')])
    with pytest.raises(FloatingPointError,
                       match=r'^refusing to save a checkpoint at iteration 2: '
                       r'1 of 2 tensors of its state dict are not finite '
                       r'\(fc\.weight\)'):
        runner.train()
    assert checkpoints(tmp_path) == ['iter_1.pth']
    assert_all_finite(tmp_path)


@pytest.mark.parametrize('bad, reason', [
    (dict(nan_loss_at={3}), 'non-finite loss (loss_mim=nan)'),
    (dict(nan_grad_at={3}), 'non-finite gradients'),
])
def test_skip_leaves_weights_and_optimizer_untouched(tmp_path: Path, bad: dict,
                                                     reason: str) -> None:
    snapshots = Snapshots()
    runner = make_runner(tmp_path,
                         TwoTermModel(**bad),
                         custom_hooks=[
                             dict(type='beit_plugin.NonFiniteCheckHook',
                                  on_non_finite='skip'), snapshots
                         ])
    with mmengine_log() as messages:
        runner.train()
    assert runner.iter == 4  # trained to the end
    weights, optimizer = snapshots.weights, snapshots.optimizer
    # step 3 skipped: weights and momentum exactly as after step 2
    for key in weights[2]:
        assert torch.equal(weights[3][key], weights[2][key]), key
    torch.testing.assert_close(optimizer[3], optimizer[2], rtol=0, atol=0)
    # steps 2 and 4 were applied
    assert not torch.equal(weights[2]['fc.weight'], weights[1]['fc.weight'])
    assert not torch.equal(weights[4]['fc.weight'], weights[3]['fc.weight'])
    assert f'{reason} at iteration 3: optimizer step skipped (1 in a row)' \
        in messages
    assert checkpoints(tmp_path) == [f'iter_{i}.pth' for i in range(1, 5)]
    assert_all_finite(tmp_path)


def test_skips_in_a_row_stop(tmp_path: Path) -> None:
    runner = make_runner(tmp_path,
                         TwoTermModel(nan_loss_at={2, 3, 4}),
                         max_iters=6,
                         custom_hooks=[
                             dict(type='beit_plugin.NonFiniteCheckHook',
                                  on_non_finite='skip',
                                  max_consecutive_skips=3)
                         ])
    with pytest.raises(FloatingPointError,
                       match=r'^non-finite loss \(loss_mim=nan\) at iteration '
                       r'4: 3 steps skipped in a row, training stopped'):
        runner.train()
    assert_all_finite(tmp_path)


class CPUGradScaler(Hook):
    """Gives the runner's AmpOptimWrapper a working GradScaler on the CPU
    (the CUDA one it builds disables itself there)."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        runner.optim_wrapper.loss_scaler = torch.amp.GradScaler('cpu')


def test_loss_scaler_overflow_is_not_stopped(tmp_path: Path) -> None:
    """fp16 AMP on a CPU: MMEngine's AmpOptimWrapper (its GPU check patched)
    with a CPU GradScaler. A NaN gradient is the scaler's skip, not a stop."""
    snapshots = Snapshots()
    runner = make_runner(tmp_path,
                         TwoTermModel(nan_grad_at={2}),
                         optim_wrapper=dict(type='AmpOptimWrapper',
                                            dtype='bfloat16',
                                            optimizer=dict(type='SGD', lr=0.1),
                                            clip_grad=dict(max_norm=1.0)),
                         custom_hooks=[
                             dict(type='beit_plugin.NonFiniteCheckHook'),
                             CPUGradScaler(), snapshots
                         ])
    with mock.patch.object(amp_optimizer_wrapper,
                           'is_cuda_available',
                           return_value=True):
        runner.train()
    assert runner.iter == 4
    grad_norms = runner.message_hub.get_scalar('train/grad_norm').data[0]
    assert np.isnan(grad_norms).sum() == 1  # logged at iteration 2
    assert torch.equal(snapshots.weights[2]['fc.weight'],
                       snapshots.weights[1]['fc.weight'])  # the scaler's skip
    assert runner.optim_wrapper.loss_scaler.get_scale() == 2.**15  # halved


# ---------------------------------------------------------------------------
# atomic checkpoints
# ---------------------------------------------------------------------------

KILL_WHILE_SAVING = """
import builtins, os, signal
import beit_plugin
from mmengine.registry import DefaultScope
from helpers import make_runner

real_open = builtins.open


class KilledHalfway:
    # a file whose first write stores half the bytes, then SIGKILLs us
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def open_(file, mode='r', *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if 'w' in mode and os.path.basename(str(file)).startswith('iter_4'):
        return KilledHalfway(f)
    return f


builtins.open = open_
with DefaultScope.overwrite_default_scope('mmengine'):
    make_runner(WORK_DIR, checkpoint=dict(
        type='beit_plugin.AtomicCheckpointHook', interval=2, by_epoch=False,
        max_keep_ckpts=1)).train()
"""


@pytest.mark.slow
def test_kill_while_saving_keeps_the_previous_checkpoint(
        tmp_path: Path) -> None:
    work_dir = tmp_path / 'work'
    code = 'from pathlib import Path\n' \
        f'WORK_DIR = Path({str(work_dir)!r})\n' + KILL_WHILE_SAVING
    env = dict(os.environ,
               OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   p for p in (str(TESTS), os.environ.get('PYTHONPATH')) if p))
    result = subprocess.run([sys.executable, '-c', code],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert checkpoints(work_dir) == ['iter_2.pth']  # nothing partial
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir /
                                                             'iter_2.pth')
    assert_all_finite(work_dir)
    start = StartIteration()
    make_runner(work_dir,
                resume=True,
                custom_hooks=[start],
                checkpoint=dict(type=ATOMIC,
                                interval=2,
                                by_epoch=False,
                                max_keep_ckpts=1)).train()
    assert start.iter == 2
    assert checkpoints(work_dir) == ['iter_4.pth']


def test_old_checkpoint_is_removed_after_the_new_one_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []  # (removed, files then, last_checkpoint then)
    remove = LocalBackend.remove

    def spy(self, path) -> None:
        seen.append((Path(path).name, checkpoints(tmp_path),
                     (tmp_path / 'last_checkpoint').read_text()))
        remove(self, path)

    monkeypatch.setattr(LocalBackend, 'remove', spy)
    make_runner(tmp_path,
                max_iters=3,
                checkpoint=dict(type=ATOMIC,
                                interval=1,
                                by_epoch=False,
                                max_keep_ckpts=1)).train()
    assert seen == [
        ('iter_1.pth', ['iter_1.pth',
                        'iter_2.pth'], str(tmp_path / 'iter_2.pth')),
        ('iter_2.pth', ['iter_2.pth',
                        'iter_3.pth'], str(tmp_path / 'iter_3.pth')),
    ]
    assert checkpoints(tmp_path) == ['iter_3.pth']
    assert_all_finite(tmp_path)


class Evaluations(BaseMetric):
    """A metric that grows with every evaluation: each one is a new best."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def process(self, data_batch, data_samples) -> None:
        self.results.append(0)

    def compute_metrics(self, results: list) -> Dict[str, int]:
        self.count += 1
        return dict(count=self.count)


def test_previous_best_is_removed_after_the_new_best_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []  # (removed, files then)
    remove = LocalBackend.remove

    def spy(self, path) -> None:
        seen.append((Path(path).name, checkpoints(tmp_path)))
        remove(self, path)

    monkeypatch.setattr(LocalBackend, 'remove', spy)
    make_runner(tmp_path,
                checkpoint=dict(type=ATOMIC,
                                interval=1,
                                by_epoch=False,
                                max_keep_ckpts=1,
                                save_best='count',
                                rule='greater'),
                train_cfg=dict(by_epoch=False, max_iters=2, val_interval=1),
                val_dataloader=dict(dataset=ToyDataset(),
                                    sampler=dict(type='DefaultSampler',
                                                 shuffle=False),
                                    batch_size=4,
                                    collate_fn=dict(type='default_collate')),
                val_cfg=dict(),
                val_evaluator=[Evaluations()]).train()
    assert seen == [
        ('iter_1.pth', ['best_count_iter_1.pth', 'iter_1.pth', 'iter_2.pth']),
        ('best_count_iter_1.pth',
         ['best_count_iter_1.pth', 'best_count_iter_2.pth', 'iter_2.pth']),
    ]
    assert checkpoints(tmp_path) == ['best_count_iter_2.pth', 'iter_2.pth']


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run's complete checkpoints iter_2.pth and iter_4.pth."""
    work_dir = tmp_path_factory.mktemp('trained')
    with DefaultScope.overwrite_default_scope('mmengine'):
        make_runner(work_dir,
                    checkpoint=dict(type=ATOMIC, interval=2,
                                    by_epoch=False)).train()
    return work_dir


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize('fraction', [0, 0.5, 0.999])
def test_truncated_checkpoint_is_named(trained: Path, tmp_path: Path,
                                       fraction: float) -> None:
    path = truncate(trained / 'iter_4.pth', tmp_path / 'cut.pth', fraction)
    expected = f"Cannot load '{path}': truncated checkpoint"
    with pytest.raises(RuntimeError, match=expected):
        load_checkpoint(ToyModel(), str(path))
    model = ToyModel()
    model.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(RuntimeError, match=expected):
        model.init_weights()
    runner = make_runner(tmp_path / 'resume', load_from=str(path), resume=True)
    with pytest.raises(RuntimeError, match=expected):
        runner.train()


@pytest.mark.parametrize('content', [
    b'epoch 1 loss 0.5\n',  # a log given as the checkpoint
    b'\xff\xd8\xff\xe0\x00\x10JFIF',  # a JPEG
])
def test_a_file_torch_save_did_not_write_is_named(tmp_path: Path,
                                                  content: bytes) -> None:
    """Not a checkpoint, and not an unsafe one either: the error says so
    (torch's own reader fails with e.g. ``KeyError: 101`` or an unpickling
    error that would read as a refused payload)."""
    path = tmp_path / 'not_a_checkpoint.pth'
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError,
                       match=f"'{path}' is not a checkpoint: it begins "
                       'with') as err:
        load_checkpoint(ToyModel(), str(path))
    assert not isinstance(err.value, checkpoint_loading.UnsafeCheckpointError)
    model = ToyModel()
    model.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(NotACheckpointError, match='is not a checkpoint'):
        model.init_weights()


def test_auto_resume_falls_back_to_the_last_complete_checkpoint(
        trained: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    for name in ('iter_2.pth', 'iter_4.pth'):
        (work_dir / name).write_bytes((trained / name).read_bytes())
    truncate(trained / 'iter_4.pth', work_dir / 'iter_4.pth', 0.5)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_4.pth'))
    start = StartIteration()
    runner = make_runner(work_dir,
                         resume=True,
                         custom_hooks=[start],
                         checkpoint=dict(type=ATOMIC,
                                         interval=2,
                                         by_epoch=False))
    with mmengine_log() as messages:
        runner.train()
    assert start.iter == 2
    assert (f"last_checkpoint names '{work_dir / 'iter_4.pth'}', which is "
            f"missing or truncated: resuming from '{work_dir / 'iter_2.pth'}'"
            ', the latest complete checkpoint') in messages
    assert_all_finite(work_dir)  # iter_4.pth written again, complete


def test_a_misspelt_checkpoint_option_is_refused_before_training(
        tmp_path: Path) -> None:
    """MMEngine's CheckpointHook takes ``intervl=2`` and fails only at its
    first save, after training; ours refuses it when the runner builds it."""
    with pytest.raises(TypeError, match=r"default_hooks.checkpoint: unknown "
                       r"option 'intervl' \(did you mean 'interval'\?\)"):
        make_runner(tmp_path, checkpoint=dict(type=ATOMIC, intervl=2,
                                              by_epoch=False))
    assert not list(tmp_path.rglob('*.pth'))
