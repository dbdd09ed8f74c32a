"""Helpers shared by the test modules: paths, the tiny architecture, tools
and subprocesses, toy runners, and the tiny models and configs of each job.

Test modules import them from here (pytest puts tests/ on ``sys.path``, as
does :func:`run` for its subprocesses), never from one another, nor from
conftest.py, which holds the fixtures. A helper that one module uses stays in
that module.
"""
import contextlib
import copy
import importlib.util
import itertools
import logging
import os
import socket
import subprocess
import types
from pathlib import Path
from typing import Iterator, List, Optional

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from torch import nn

from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers import DALLEEncoder, VQKDTokenizer
from compat_toys import ToyDataset, ToyModel

# ---------------------------------------------------------------------------
# paths and the tiny architecture
# ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / 'tests'
CONFIGS = ROOT / 'configs'
#: Every masked-image-modeling pretraining config.
PRETRAINING_CONFIGS = [
    CONFIGS / 'beit_pretrain.py', *sorted(CONFIGS.glob('beit/*.py')),
    *sorted(CONFIGS.glob('beitv2/*.py')),
    *sorted(CONFIGS.glob('ablations/*.py')),
    *sorted(CONFIGS.glob('own_data/*_images.py'))]
#: The backbone width and depth of the tiny models: 32 wide, 2 blocks.
TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2,
                 feedforward_channels=64)


def config_id(path: Path) -> str:
    """A config's test id: its path under configs/."""
    return path.relative_to(CONFIGS).as_posix()


@contextlib.contextmanager
def mmengine_log() -> Iterator[List[str]]:
    """The messages logged to MMEngine's current logger inside the block."""
    messages: List[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def few_iterations(cfg: Config, max_iters: int, checkpoint_interval: int,
                   val_interval: Optional[int] = None) -> None:
    """Turn a recipe config into a run of ``max_iters`` iterations: an
    iteration-based loop, a short warmup, a log line and ``vis_data`` entry
    every iteration, checkpoints every ``checkpoint_interval``."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    if val_interval is not None:
        cfg.train_cfg['val_interval'] = val_interval
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5,
                                by_epoch=False, begin=0, end=2)]
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=checkpoint_interval, by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)


# ---------------------------------------------------------------------------
# tools and subprocesses
# ---------------------------------------------------------------------------


def load_tool(name: str) -> types.ModuleType:
    """Import tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(
        f'beit_tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv: List[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``argv`` in ``cwd`` with one OpenMP thread and the variables
    ``env``; the processes can import tests/compat_toys.py and this module."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **env)
    full_env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(TESTS), os.environ.get('PYTHONPATH')) if p)
    return subprocess.run(
        argv, cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=120)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a distributed run)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# toy runners (tests/compat_toys.py)
# ---------------------------------------------------------------------------

#: A toy training config for tools/train.py and tools/test.py: 4 iterations,
#: a checkpoint every 2, the test set scored by ``ToyAccuracy``.
TOY_CONFIG = """
custom_imports = dict(imports=['beit_plugin', 'compat_toys'],
                      allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(type='compat_toys.ToyModel')
train_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='compat_toys.ToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'))
test_dataloader = dict(
    batch_size=4, num_workers=0,
    dataset=dict(type='compat_toys.ToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))
test_evaluator = dict(type='compat_toys.ToyAccuracy')
test_cfg = dict()
train_cfg = dict(by_epoch=False, max_iters=4)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='compat_toys.ParamDumpHook')]
"""
_runner_names = itertools.count()


def make_runner(work_dir: Path,
                model: Optional[ToyModel] = None,
                *,
                max_iters: int = 4,
                checkpoint: Optional[dict] = None,
                optim_wrapper: Optional[dict] = None,
                train_cfg: Optional[dict] = None,
                **kwargs) -> Runner:
    """A deterministic toy runner (unshuffled ``ToyDataset``, 2 samples a
    batch, SGD, seed 0) of ``max_iters`` iterations; by default a
    ``ToyModel`` and MMEngine's CheckpointHook every iteration.

    ``checkpoint``, ``optim_wrapper`` and ``train_cfg`` replace those
    defaults; ``kwargs`` go to the ``Runner``. Each runner has an experiment
    name of its own, so that none reuses another's logger or message hub.
    """
    return Runner(
        model=model or ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(),
                              sampler=dict(type='DefaultSampler',
                                           shuffle=False),
                              batch_size=2,
                              collate_fn=dict(type='default_collate')),
        train_cfg=train_cfg or dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=optim_wrapper
        or dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(
            checkpoint=checkpoint
            or dict(type='CheckpointHook', interval=1, by_epoch=False)),
        randomness=dict(seed=0),
        experiment_name=f'toy_{next(_runner_names)}',
        **kwargs)


class CreatesFile:
    """Unpickling it opens (creates) ``path``: a stand-in for any payload."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


# ---------------------------------------------------------------------------
# tiny models and configs
# ---------------------------------------------------------------------------


def randomise(module: nn.Module, scale: float = 0.2) -> nn.Module:
    """Fill every parameter of ``module`` with normal noise of standard
    deviation ``scale``, in place (zero-initialised tables, and layer scales
    equal everywhere, would hide bugs and mapping mistakes).

    Returns:
        nn.Module: ``module``.
    """
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return module


#: The tiny classifiers: image size, patch size (a 4x4 grid), classes.
CLS_IMG, CLS_PATCH, CLS_NUM_CLASSES = 32, 8, 8


def shrink_classifier(cfg: Config) -> None:
    """Shrink a classification config's model in place: the tiny arch at
    :data:`CLS_IMG` px, :data:`CLS_NUM_CLASSES` classes, frozen stages and
    out indices clamped to its depth."""
    dims = TINY_ARCH['embed_dims']
    backbone = cfg.model.backbone
    backbone.update(arch=TINY_ARCH, img_size=CLS_IMG, patch_size=CLS_PATCH)
    if backbone.get('frozen_stages', -1) > 0:
        backbone.frozen_stages = TINY_ARCH['num_layers']
    if 'out_indices' in backbone:
        backbone.out_indices = tuple(
            min(i, TINY_ARCH['num_layers'] - 1) for i in backbone.out_indices)
    if cfg.model.get('neck'):
        cfg.model.neck.in_channels = dims
    cfg.model.head.update(in_channels=dims, num_classes=CLS_NUM_CLASSES)
    cfg.data_preprocessor.num_classes = CLS_NUM_CLASSES


def shrink_segmentor(model_cfg: dict) -> dict:
    """A segmentation config's model at a tiny width (same depth, out
    indices, grid), no checkpoint; ``model_cfg`` is left as it is."""
    dims = TINY_ARCH['embed_dims']
    model_cfg = copy.deepcopy(model_cfg)
    backbone = model_cfg['backbone']
    depth = BEiT._arch_settings(backbone['arch'])['num_layers']
    backbone['arch'] = dict(TINY_ARCH, num_layers=depth)
    backbone['init_cfg'] = None
    model_cfg['neck']['embed_dim'] = dims
    model_cfg['decode_head'].update(in_channels=[dims] * 4, channels=16)
    model_cfg['auxiliary_head'].update(in_channels=dims, channels=8)
    return model_cfg


def write_tiny_seg_demo_config(tmp_path: Path, ade_root: Path) -> Path:
    """Write ``tmp_path/tiny_seg_demo.py``: configs/seg/beit_demo_upernet.py
    with a tiny 4-block model and no checkpoint, on the demo ADE20K data at
    ``ade_root``, batches of 2, one iteration (validated, saved)."""
    dims = TINY_ARCH['embed_dims']
    config = tmp_path / 'tiny_seg_demo.py'
    config.write_text(f"""
_base_ = {str(CONFIGS / 'seg' / 'beit_demo_upernet.py')!r}
data_root = {str(ade_root)!r}
model = dict(
    backbone=dict(arch={dict(TINY_ARCH, num_layers=4)!r},
                  out_indices=(0, 1, 2, 3),
                  init_cfg=None),
    neck=dict(embed_dim={dims}),
    decode_head=dict(in_channels=[{dims}] * 4, channels=16),
    auxiliary_head=dict(in_channels={dims}, channels=8))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=1, val_interval=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                        begin=0, end=1)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1))
""")
    return config


#: The tiny pretraining runs: image size, patch size, patch grid side,
#: tokenizer vocabulary.
PRETRAIN_IMG, PRETRAIN_PATCH, PRETRAIN_GRID = 64, 16, 4
PRETRAIN_VOCAB = 16


def save_tokenizer(version: str, path: Path) -> Path:
    """A random tiny tokenizer of the kind the recipe uses (``'v1'``: a DALL-E
    encoder, ``'v2'``: VQ-KD), saved to ``path``."""
    torch.manual_seed(1)
    if version == 'v1':
        tokenizer = DALLEEncoder(n_hid=8, n_blk_per_group=1,
                                 vocab_size=PRETRAIN_VOCAB)
    else:
        # a random codebook, as if trained: a frozen tokenizer refuses one
        # still waiting for its k-means initialisation
        tokenizer = VQKDTokenizer(
            encoder=dict(arch=TINY_ARCH, img_size=PRETRAIN_IMG,
                         patch_size=PRETRAIN_PATCH),
            num_embed=PRETRAIN_VOCAB, embed_dims=8, kmeans_init=False)
    torch.save({'state_dict': tokenizer.state_dict()}, path)
    return path


def loss_without_device_syncs(model: nn.Module, inputs: List[torch.Tensor],
                              samples: list) -> dict:
    """``model.loss`` on a GPU under CUDA's sync debug mode ``'error'``
    (it raises on any operation that waits for the whole device), after one
    call for the lazy initialisations; ``inputs`` and the samples' masks
    are moved to the GPU."""
    inputs = [x.cuda() for x in inputs]
    for sample in samples:
        sample.set_field(sample.mask.cuda(), 'mask')
    model.loss(inputs, samples)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        return model.loss(inputs, samples)
    finally:
        torch.cuda.set_sync_debug_mode('default')
