import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import torch
from mmengine.logging import MMLogger

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2,
                 feedforward_channels=64)

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
#: Every masked-image-modeling pretraining config.
PRETRAINING_CONFIGS = [
    CONFIGS / 'beit_pretrain.py', *sorted(CONFIGS.glob('beit/*.py')),
    *sorted(CONFIGS.glob('beitv2/*.py')),
    *sorted(CONFIGS.glob('ablations/*.py')),
    *sorted(CONFIGS.glob('own_data/*_images.py'))]


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


def few_iterations(cfg, max_iters: int, checkpoint_interval: int,
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
