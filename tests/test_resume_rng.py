"""Resume exactness: a run killed and resumed ends with the weights and
optimizer state, bit for bit, of a run that was never interrupted
(RNGStateHook).

Toy runners (a 4-feature linear classifier with dropout, samples with NumPy
and Python noise) check the hook in-process; the slow tests kill the
pretraining, fine-tuning (drop path 0.1) and segmentation demos, shrunk to
tiny models on tiny generated data, with SIGKILL after a checkpoint and
resume them with ``tools/train.py --resume``, and resume a two-rank run.
"""
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch.utils.data import Subset

from beit_plugin.compat import safe_torch_load
from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.engine.hooks import RNGStateHook
from beit_plugin.engine.hooks import rng_state as rng_state_module
from beit_plugin.engine.hooks.rng_state import (RNG_STATES_KEY, rng_state,
                                                set_rng_state)
from compat_toys import ToyAccuracy, ToyDataset, ToyModel
from helpers import PRETRAIN_GRID as GRID
from helpers import PRETRAIN_IMG as IMG
from helpers import PRETRAIN_PATCH as PATCH
from helpers import PRETRAIN_VOCAB as VOCAB
from helpers import (ROOT, TESTS, TINY_ARCH, few_iterations, free_port,
                     mmengine_log, save_tokenizer, write_tiny_seg_demo_config)

RNG_HOOK = dict(type='beit_plugin.RNGStateHook')
DIMS = TINY_ARCH['embed_dims']
# the demo runs: 8 iterations, a checkpoint every 2, validation every 2 (the
# one at 4 runs after iter_4.pth is written), killed in iteration 5; 4
# iterations trained again, so that with drop path 0.1 in the last block
# only (a 2-block backbone; 2 draws a sample, a batch of 8: 64 draws) both
# runs keep every sample with a probability of (0.9 ** 64) ** 2, about 1e-6
MAX_ITERS, INTERVAL, KILLED_IN = 8, 2, 5
_names = itertools.count()


@pytest.fixture(autouse=True)
def _keep_default_scope() -> Iterator[None]:
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


class RandomToyModel(ToyModel):
    """The toy classifier with dropout on its inputs: training draws from
    torch's global generator, as drop path does."""

    def forward(self,
                inputs: torch.Tensor,
                label: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        return super().forward(F.dropout(inputs, 0.5, self.training), label,
                               mode)


class RandomToyDataset(ToyDataset):
    """The toy samples plus noise from NumPy's and Python's global
    generators, as a pipeline's augmentation draws (in the main process
    with ``num_workers=0``)."""

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        sample = super().__getitem__(index)
        sample['inputs'] = sample['inputs'] + float(
            np.random.rand()) + random.random()
        return sample


class SigkillAt(Hook):
    """SIGKILLs the training process at the end of ``iteration`` (1-based),
    after its optimizer step and before anything of it is saved."""
    priority = 'LOWEST'

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def toy_runner(work_dir: Path,
               *,
               hooks: Tuple = (RNG_HOOK, ),
               by_epoch: bool = False,
               val_interval: Optional[int] = 2,
               checkpoint: Optional[dict] = None,
               sampler: Optional[str] = None,
               workers: int = 0,
               **kwargs) -> Runner:
    """A toy run of 6 iterations (3 epochs of 2 with ``by_epoch``, of 3
    with a ``DefaultSampler``), a checkpoint every 2 iterations (every
    epoch), validation every ``val_interval`` iterations (epochs), none if
    None; ``checkpoint`` replaces the ``CheckpointHook``'s config; the
    training data loader has ``workers`` persistent workers.

    The sampler is by default an ``InfiniteSampler`` without ``by_epoch``:
    at the end of a ``DefaultSampler``'s epoch MMEngine's iteration-based
    loop sleeps 2 s.
    """
    torch.manual_seed(0)  # the same initial weights in every run
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=3)
        checkpoint = checkpoint or dict(type='CheckpointHook', interval=1)
    else:
        train_cfg = dict(by_epoch=False, max_iters=6)
        checkpoint = checkpoint or dict(
            type='CheckpointHook', interval=2, by_epoch=False)
    sampler = sampler or ('DefaultSampler' if by_epoch else 'InfiniteSampler')
    loader = dict(batch_size=2, collate_fn=dict(type='default_collate'))
    val = {}
    if val_interval is not None:
        train_cfg['val_interval'] = val_interval
        val = dict(val_dataloader=dict(loader,
                                       dataset=ToyDataset(),
                                       sampler=dict(type='DefaultSampler',
                                                    shuffle=False)),
                   val_cfg=dict(),
                   val_evaluator=[ToyAccuracy()])
    dataset = Subset(RandomToyDataset(), range(4 if by_epoch else 6))
    return Runner(
        model=RandomToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(loader,
                              dataset=dataset,
                              sampler=dict(type=sampler, shuffle=True),
                              num_workers=workers,
                              persistent_workers=workers > 0),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(checkpoint=checkpoint),
        custom_hooks=list(hooks),
        randomness=dict(seed=0),
        experiment_name=f'resume_rng_{next(_names)}',
        **val,
        **kwargs)


def training_state(runner: Runner) -> Dict[str, dict]:
    return dict(state_dict=runner.model.state_dict(),
                optimizer=runner.optim_wrapper.state_dict())


def differences(expected, actual, path: str = '') -> List[str]:
    """The paths at which two nested checkpoint entries differ: tensors
    compared with ``torch.equal``, arrays with ``np.array_equal``, anything
    else with ``==``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f'{path}: keys {sorted(expected)} != {sorted(actual)}']
        return [
            d for key in expected
            for d in differences(expected[key], actual[key], f'{path}.{key}')
        ]
    if isinstance(expected,
                  (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f'{path}: {len(expected)} != {len(actual)} entries']
        return [
            d for i, (e, a) in enumerate(zip(expected, actual))
            for d in differences(e, a, f'{path}[{i}]')
        ]
    if torch.is_tensor(expected) or torch.is_tensor(actual):
        same = torch.is_tensor(expected) and torch.is_tensor(actual) and \
            expected.dtype == actual.dtype and torch.equal(expected, actual)
    elif isinstance(expected, np.ndarray):
        same = isinstance(actual, np.ndarray) and \
            expected.dtype == actual.dtype and np.array_equal(expected, actual)
    else:
        same = expected == actual
    return [] if same else [path]


def assert_same_training_state(expected: Dict[str, dict],
                               actual: Dict[str, dict]) -> None:
    """Every tensor of the model's state dict and of the optimizer state
    bit-identical."""
    for key in ('state_dict', 'optimizer'):
        different = differences(expected[key], actual[key], key)
        assert not different, f'{len(different)} differ: {different[:10]}'


def resume_from(checkpoint: Path, work_dir: Path, **kwargs) -> Runner:
    """A toy runner resuming from a copy of ``checkpoint``."""
    work_dir.mkdir(parents=True)
    copy = work_dir / checkpoint.name
    shutil.copyfile(checkpoint, copy)
    return toy_runner(work_dir, load_from=str(copy), resume=True, **kwargs)


# ---------------------------------------------------------------------------
# the states and the hook, in-process
# ---------------------------------------------------------------------------


def draws() -> tuple:
    return (torch.rand(3).tolist(), torch.randn(2).tolist(),
            np.random.rand(3).tolist(), [random.random() for _ in range(3)])


def test_states_round_trip_through_a_weights_only_checkpoint(
        tmp_path: Path) -> None:
    path = tmp_path / 'rng.pth'
    torch.save({RNG_STATES_KEY: [rng_state()]}, path)
    expected = draws()
    assert draws() != expected  # the generators moved on
    set_rng_state(safe_torch_load(path)[RNG_STATES_KEY][0])
    assert draws() == expected


def test_hook_writes_the_states_and_restores_them_on_resume() -> None:
    """``before_save_checkpoint`` into a checkpoint dict; on resume,
    ``after_load_checkpoint`` then (epoch-based loop) ``before_train_epoch``
    put the generators back."""
    hook = RNGStateHook()
    loop = SimpleNamespace(dataloader=SimpleNamespace(num_workers=0))
    runner = SimpleNamespace(_resume=True, seed=0, train_loop=loop)
    checkpoint = dict(meta=dict(seed=0))
    hook.before_save_checkpoint(runner, checkpoint)
    expected = draws()
    hook.after_load_checkpoint(runner, checkpoint)
    assert draws() != expected  # restored only where the epoch starts
    hook.before_train_epoch(runner)
    assert draws() == expected


@pytest.mark.parametrize('by_epoch', [False, True], ids=['iter', 'epoch'])
def test_toy_resume_is_exact(tmp_path: Path, by_epoch: bool) -> None:
    """Dropout, sample noise, a new DataLoader iterator each epoch and
    validation between checkpoints: resuming from the middle checkpoint
    ends where the uninterrupted run does; without the hook it does not."""
    middle = 'epoch_2.pth' if by_epoch else 'iter_4.pth'
    states = {}
    for hooks in ((RNG_HOOK, ), ()):
        options = dict(hooks=hooks,
                       by_epoch=by_epoch,
                       val_interval=1,
                       sampler='DefaultSampler')
        full = toy_runner(tmp_path / f'full_{len(hooks)}', **options)
        full.train()
        resumed = resume_from(tmp_path / f'full_{len(hooks)}' / middle,
                              tmp_path / f'resumed_{len(hooks)}', **options)
        resumed.train()
        states[len(hooks)] = training_state(full), training_state(resumed)
    assert_same_training_state(*states[1])
    without_hook = states[0]
    assert differences(without_hook[0]['state_dict'],
                       without_hook[1]['state_dict'])


def test_validation_does_not_change_training(tmp_path: Path) -> None:
    """Validation draws from torch's generator (the validation DataLoader
    iterator's base seed): with the hook, training with validation after
    every iteration is training without validation."""
    results = {}
    for hooks, val_interval in itertools.product(((RNG_HOOK, ), ()),
                                                 (1, None)):
        runner = toy_runner(tmp_path / f'{len(hooks)}_{val_interval}',
                            hooks=hooks,
                            val_interval=val_interval)
        runner.train()
        results[len(hooks), val_interval] = training_state(runner)
    assert_same_training_state(results[1, 1], results[1, None])
    assert differences(results[0, 1]['state_dict'],
                       results[0, None]['state_dict'])


def test_best_checkpoint_holds_the_states_from_before_validation(
        tmp_path: Path) -> None:
    """A best checkpoint is written during validation: it resumes like the
    regular checkpoint of the same iteration."""
    runner = toy_runner(tmp_path / 'full',
                        checkpoint=dict(type='CheckpointHook',
                                        interval=2,
                                        by_epoch=False,
                                        save_best='accuracy',
                                        rule='greater'))
    runner.train()
    best = sorted((tmp_path / 'full').glob('best_accuracy_iter_*.pth'))
    assert best
    iteration = best[-1].stem.rsplit('_', 1)[-1]
    regular = safe_torch_load(tmp_path / 'full' / f'iter_{iteration}.pth')
    assert not differences(regular[RNG_STATES_KEY],
                           safe_torch_load(best[-1])[RNG_STATES_KEY])


def test_load_from_restores_nothing(tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_from`` without ``resume`` starts a new run from the weights:
    its generators stay seeded."""
    toy_runner(tmp_path / 'full', val_interval=None).train()
    restored = []
    monkeypatch.setattr(rng_state_module, 'set_rng_state', restored.append)
    toy_runner(tmp_path / 'new',
               val_interval=None,
               load_from=str(tmp_path / 'full' / 'iter_4.pth')).train()
    assert restored == []


def edited_checkpoint(tmp_path: Path, edit) -> Path:
    """The toy run's iter_4.pth after ``edit(checkpoint)``."""
    toy_runner(tmp_path / 'full', val_interval=None).train()
    checkpoint = safe_torch_load(tmp_path / 'full' / 'iter_4.pth')
    edit(checkpoint)
    path = tmp_path / 'edited' / 'iter_4.pth'
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.pop(RNG_STATES_KEY),
     'the checkpoint holds no random generator states (saved without '
     'RNGStateHook): they are not restored'),
    (lambda c: c[RNG_STATES_KEY].append(c[RNG_STATES_KEY][0]),
     'the checkpoint holds the random generator states of 2 processes, this '
     'run has 1: they are not restored'),
],
                         ids=['old checkpoint', 'other world size'])
def test_unusable_states_are_named_and_skipped(tmp_path: Path, edit,
                                               message: str) -> None:
    checkpoint = edited_checkpoint(tmp_path, edit)
    runner = toy_runner(tmp_path / 'resumed',
                        val_interval=None,
                        load_from=str(checkpoint),
                        resume=True)
    with mmengine_log() as messages:
        runner.train()
    assert runner.iter == 6
    assert any(m.startswith(message) for m in messages), messages


def test_persistent_workers_of_an_epoch_loop_are_named(tmp_path: Path) -> None:
    toy_runner(tmp_path / 'full', by_epoch=True, val_interval=None,
               workers=1).train()
    resumed = resume_from(tmp_path / 'full' / 'epoch_2.pth',
                          tmp_path / 'resumed',
                          by_epoch=True,
                          val_interval=None,
                          workers=1)
    with mmengine_log() as messages:
        resumed.train()
    assert any(
        m.startswith('persistent_workers=True: the data loader '
                     'workers keep their random state')
        for m in messages), messages


def test_resume_with_another_seed_is_named(tmp_path: Path) -> None:
    """``randomness.seed=None``: MMEngine seeded the sampler and the
    workers with a new random seed before reading the checkpoint."""
    checkpoint = edited_checkpoint(tmp_path,
                                   lambda c: c['meta'].update(seed=1234))
    runner = toy_runner(tmp_path / 'resumed',
                        val_interval=None,
                        load_from=str(checkpoint),
                        resume=True)
    with mmengine_log() as messages:
        runner.train()
    assert any('the checkpoint was trained with seed 1234, while the data '
               'sampler and loader workers of this run were seeded with 0' in m
               and 'randomness.seed=1234' in m for m in messages)


def test_every_config_keeps_the_states_and_a_seed() -> None:
    """Every config under configs/ trains with one RNGStateHook (most of
    them inherit it) and a fixed seed (with ``randomness.seed=None`` the
    sampler and the workers get a new seed on resume)."""
    for path in sorted((ROOT / 'configs').rglob('*.py')):
        cfg = Config.fromfile(path)
        hooks = [hook['type'] for hook in cfg.get('custom_hooks', [])]
        assert hooks.count(RNG_HOOK['type']) == 1, path
        assert cfg.get('randomness', {}).get('seed') is not None, path


# ---------------------------------------------------------------------------
# two ranks
# ---------------------------------------------------------------------------

DIST_CONFIG = """
custom_imports = dict(imports=['beit_plugin', 'test_resume_rng'],
                      allow_failed_imports=False)
default_scope = 'mmengine'
model = dict(type='test_resume_rng.RandomToyModel')
train_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='test_resume_rng.RandomToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'))
val_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='compat_toys.ToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))
val_evaluator = dict(type='compat_toys.ToyAccuracy')
val_cfg = dict()
train_cfg = dict(by_epoch=False, max_iters=4, val_interval=1)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
default_hooks = dict(
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', interval=2,
                    by_epoch=False, save_best='accuracy', rule='greater'),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='beit_plugin.RNGStateHook')]
randomness = dict(seed=0, diff_rank_seed=True)
"""


def subprocess_env() -> Dict[str, str]:
    return dict(os.environ,
                OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join(
                    p for p in (str(TESTS), os.environ.get('PYTHONPATH'))
                    if p))


def dist_train(config: Path, work_dir: Path, *args: str) -> None:
    result = subprocess.run([
        'bash',
        str(ROOT / 'tools/dist_train.sh'),
        str(config), '2', '--work-dir',
        str(work_dir), *args
    ],
                            cwd=config.parent,
                            env=dict(subprocess_env(),
                                     PORT=str(free_port()),
                                     PYTHON=sys.executable),
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_resume_exactly(tmp_path: Path) -> None:
    """Each rank's states are gathered into the checkpoints (the regular
    ones and the best ones written during validation) and each rank gets
    its own back."""
    config = tmp_path / 'toy_dist.py'
    config.write_text(DIST_CONFIG)
    dist_train(config, tmp_path / 'full')
    middle = safe_torch_load(tmp_path / 'full' / 'iter_2.pth')
    ranks = middle[RNG_STATES_KEY]
    assert len(ranks) == 2  # diff_rank_seed: ranks draw differently
    assert not torch.equal(ranks[0]['torch'], ranks[1]['torch'])
    best = list((tmp_path / 'full').glob('best_*.pth'))
    assert best
    for path in best:
        assert all(safe_torch_load(path)[RNG_STATES_KEY])  # both ranks
    (tmp_path / 'resumed').mkdir()
    shutil.copyfile(tmp_path / 'full' / 'iter_2.pth',
                    tmp_path / 'resumed' / 'iter_2.pth')
    dist_train(config, tmp_path / 'resumed', '--resume',
               str(tmp_path / 'resumed' / 'iter_2.pth'))
    assert_same_training_state(
        safe_torch_load(tmp_path / 'full' / 'iter_4.pth'),
        safe_torch_load(tmp_path / 'resumed' / 'iter_4.pth'))


# ---------------------------------------------------------------------------
# the demos: kill -9, then tools/train.py --resume
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training images: 3 iterations an epoch at batch 4, so the
    resumed run's skip of 4 batches crosses an epoch."""
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=12, cls_val=8, seg_train=8, seg_val=2)
    return root


def shorten(cfg: Config, checkpoint: dict) -> None:
    """``MAX_ITERS`` iterations, a checkpoint every ``INTERVAL`` by the
    demo's own ``AtomicCheckpointHook`` (``checkpoint`` for its other
    options), validation every ``INTERVAL`` if the demo validates."""
    validates = cfg.get('val_dataloader') is not None
    few_iterations(cfg,
                   max_iters=MAX_ITERS,
                   checkpoint_interval=INTERVAL,
                   val_interval=INTERVAL if validates else None)
    cfg.default_hooks.checkpoint = dict(
        type='beit_plugin.AtomicCheckpointHook',
        interval=INTERVAL,
        by_epoch=False,
        **checkpoint)


def tiny_pretrain(tmp: Path, demo_root: Path) -> Config:
    """configs/beit_pretrain.py with a tiny model and tokenizer, its two
    persistent data loader workers kept."""
    cfg = Config.fromfile(ROOT / 'configs/beit_pretrain.py')
    model = cfg.model
    model.backbone.update(arch=TINY_ARCH,
                          img_size=IMG,
                          patch_size=PATCH,
                          out_indices=(0, -1))
    model.neck.update(embed_dims=DIMS,
                      num_heads=2,
                      feedforward_channels=64,
                      early_layers=1,
                      backbone_layers=2)
    model.head.update(in_channels=DIMS, num_embed=VOCAB)
    model.target_generator.update(encoder=dict(arch=TINY_ARCH,
                                               img_size=IMG,
                                               patch_size=PATCH),
                                  num_embed=VOCAB,
                                  embed_dims=8)
    model.target_generator.init_cfg.checkpoint = str(
        save_tokenizer('v2', tmp / 'tokenizer.pth'))
    loader = cfg.train_dataloader
    for step in loader.dataset.pipeline:
        if step.type == 'RandomResizedCropAndInterpolationWithTwoPic':
            step.update(size=IMG, second_size=IMG)
        if step.type.endswith('BlockwiseMaskGenerator'):
            step.update(input_size=GRID,
                        num_masking_patches=6,
                        min_num_patches=2)
    loader.batch_size = 4
    loader.dataset.data_root = str(demo_root / 'imagenet')
    shorten(cfg, {})
    return cfg


def tiny_finetune(tmp: Path, demo_root: Path) -> Config:
    """configs/finetune/beit_demo_finetune.py from scratch with a tiny
    backbone, drop path 0.1, the pipeline in the main process
    (``num_workers=0``), the best checkpoint kept (written during
    validation)."""
    cfg = Config.fromfile(ROOT / 'configs/finetune/beit_demo_finetune.py')
    cfg.model.backbone.update(arch=TINY_ARCH,
                              patch_size=PATCH,
                              drop_path_rate=0.1,
                              init_cfg=None)
    cfg.model.head.in_channels = DIMS
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.update(batch_size=8, num_workers=0, persistent_workers=False)
        loader.dataset.data_root = str(demo_root / 'imagenet')
    cfg.test_dataloader = cfg.val_dataloader
    shorten(cfg, dict(save_best='auto'))
    return cfg


def tiny_seg(tmp: Path, demo_root: Path) -> Config:
    """configs/seg/beit_demo_upernet.py as tests/test_seg.py shrinks it
    (drop path 0.1, ``num_workers=0``, InfiniteSampler)."""
    cfg = Config.fromfile(write_tiny_seg_demo_config(tmp, demo_root / 'ade'))
    shorten(cfg, {})
    return cfg


def train(config: Path, work_dir: Path, *args:
          str) -> subprocess.CompletedProcess:
    """``python tools/train.py CONFIG --work-dir WORK_DIR ARGS``."""
    return subprocess.run([
        sys.executable,
        str(ROOT / 'tools/train.py'),
        str(config), '--work-dir',
        str(work_dir), *args
    ],
                          cwd=config.parent,
                          env=subprocess_env(),
                          capture_output=True,
                          text=True,
                          timeout=300)


def kill_and_resume(cfg: Config, tmp: Path) -> None:
    """Train ``cfg`` uninterrupted; train it again, SIGKILLed in iteration
    ``KILLED_IN`` (after iter_4.pth is written, and the validation after
    it), resume that with ``--resume``; the final checkpoints agree."""
    assert [h.type for h in cfg.custom_hooks].count(RNG_HOOK['type']) == 1
    config = tmp / 'tiny.py'
    cfg.dump(config)
    cfg.custom_hooks.append(
        dict(type='test_resume_rng.SigkillAt', iteration=KILLED_IN))
    killed_config = tmp / 'tiny_killed.py'
    cfg.dump(killed_config)

    result = train(config, tmp / 'full')
    assert result.returncode == 0, result.stderr[-3000:]
    result = train(killed_config, tmp / 'killed')
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    last = KILLED_IN - KILLED_IN % INTERVAL
    assert (tmp / 'killed' / 'last_checkpoint').read_text() == \
        str(tmp / 'killed' / f'iter_{last}.pth')
    assert not (tmp / 'killed' / f'iter_{MAX_ITERS}.pth').exists()
    result = train(config, tmp / 'killed', '--resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Advance dataloader {last} steps' in result.stdout + result.stderr

    final = f'iter_{MAX_ITERS}.pth'
    assert_same_training_state(safe_torch_load(tmp / 'full' / final),
                               safe_torch_load(tmp / 'killed' / final))


@pytest.mark.slow
def test_pretraining_demo_resumes_exactly(tmp_path: Path,
                                          demo_root: Path) -> None:
    kill_and_resume(tiny_pretrain(tmp_path, demo_root), tmp_path)


@pytest.mark.slow
def test_finetuning_demo_with_drop_path_resumes_exactly(
        tmp_path: Path, demo_root: Path) -> None:
    kill_and_resume(tiny_finetune(tmp_path, demo_root), tmp_path)


@pytest.mark.slow
def test_segmentation_demo_resumes_exactly(tmp_path: Path,
                                           demo_root: Path) -> None:
    kill_and_resume(tiny_seg(tmp_path, demo_root), tmp_path)
