"""Distributed training without CUDA (gloo, CPU DDP), for the launch tools.

``tools/train.py`` and ``tools/test.py`` call :func:`configure_cpu_distributed`
on the config and :func:`init_distributed` before they build the runner;
nothing here changes MMEngine for other code. On a machine with CUDA, or
without a distributed launcher, both do nothing. Without CUDA:

- the config's backend becomes ``gloo`` (NCCL needs GPUs) and the model
  wrapper a ``DistributedDataParallel`` with ``device_ids=None``, which DDP
  requires for CPU modules (MMEngine's ``Runner`` passes
  ``device_ids=[LOCAL_RANK]``);
- the model's ``SyncBN`` norm layers become ``BN`` and a ``sync_bn`` of the
  config is dropped, each with a warning: MMEngine's ``Runner.wrap_model``
  reverts SyncBN only when training is not distributed, and
  ``DistributedDataParallel`` refuses SyncBN on CPU modules (``SyncBatchNorm
  layers only work with GPU modules``). BN and SyncBN share their parameter
  and buffer names, so checkpoints are unchanged; each process normalises
  over its own batch;
- :func:`init_distributed` initialises the process group as MMEngine's
  ``init_dist`` does, skipping its ``torch.cuda.set_device(local_rank)``,
  which raises without a GPU (``Found no NVIDIA driver``) whatever the
  backend (``mmengine/dist/utils.py``, ``_init_dist_pytorch`` /
  ``_init_dist_mpi`` / ``_init_dist_slurm``, MMEngine <= 0.10.7). The
  runner then finds the group initialised and leaves it as it is.
"""
import logging
from typing import Any, Dict
from unittest import mock

import torch
from mmengine.config import Config
from mmengine.dist import init_dist, is_distributed
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

from beit_plugin.compat import log_active_fixes

SYNC_BN_TYPES = ('SyncBN', 'nn.SyncBatchNorm', 'SyncBatchNorm')


def _without_sync_bn(cfg: Any) -> int:
    """Turn every ``type='SyncBN'`` dict inside ``cfg`` into ``'BN'``, in
    place; the number turned."""
    if isinstance(cfg, (list, tuple)):
        return sum(_without_sync_bn(item) for item in cfg)
    if not isinstance(cfg, dict):
        return 0
    turned = 0
    if cfg.get('type') in SYNC_BN_TYPES:
        cfg['type'] = 'BN'
        turned += 1
    return turned + sum(_without_sync_bn(value) for value in cfg.values())


def configure_cpu_distributed(cfg: Config) -> None:
    """Adapt a config's distributed settings to a machine without CUDA.

    Does nothing when CUDA is available or ``cfg.launcher`` is ``'none'``.
    Otherwise sets ``env_cfg.dist_cfg.backend='gloo'``, makes the model
    wrapper a DDP with ``device_ids=None`` (a ``model_wrapper_cfg`` of the
    config is kept; only ``device_ids=None`` is added to it if it is a DDP
    wrapper), turns the model's SyncBN into BN and drops ``sync_bn`` (see
    the module doc).

    Args:
        cfg (Config): The full config, with ``launcher`` set; changed in place.
    """
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg') is None:
        cfg.env_cfg.dist_cfg = dict()
    dist_cfg = cfg.env_cfg.dist_cfg
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log(
            f"CUDA is not available: dist_cfg.backend "
            f"{dist_cfg.get('backend', 'nccl')!r} -> 'gloo'",
            logger='current',
            level=logging.WARNING)
        dist_cfg['backend'] = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg: Dict = cfg.model_wrapper_cfg
    wrapper_type = MODEL_WRAPPERS.get(
        wrapper_cfg.get('type', 'MMDistributedDataParallel'))
    if isinstance(wrapper_type, type) and issubclass(wrapper_type,
                                                     DistributedDataParallel):
        wrapper_cfg.setdefault('device_ids', None)
    if _without_sync_bn(cfg.get('model')):
        print_log(
            'CUDA is not available: the model\'s SyncBN layers are BN for '
            'distributed training on the CPU (DistributedDataParallel only '
            'supports SyncBN on GPUs); each process normalises over its own '
            'batch.',
            logger='current',
            level=logging.WARNING)
    if cfg.get('sync_bn') is not None:
        print_log(
            f'CUDA is not available: sync_bn={cfg.sync_bn!r} is ignored '
            '(SyncBN needs GPUs).',
            logger='current',
            level=logging.WARNING)
        cfg.pop('sync_bn')


def _skip_set_device(device: Any) -> None:
    """Stands in for ``torch.cuda.set_device`` when there is no CUDA."""


def init_distributed(cfg: Config) -> bool:
    """Initialise the process group of a distributed launch without CUDA.

    MMEngine's ``init_dist`` with ``cfg.env_cfg.dist_cfg``, its
    ``torch.cuda.set_device`` call skipped (see the module doc). Does
    nothing with CUDA (the runner initialises the group itself), without a
    launcher, or when a group is already initialised.

    Returns:
        bool: Whether this call initialised the group.
    """
    launcher = cfg.get('launcher', 'none')
    if torch.cuda.is_available() or launcher == 'none' or is_distributed():
        return False
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    with mock.patch.object(torch.cuda, 'set_device', _skip_set_device):
        init_dist(launcher, **dist_cfg)
    return True


def build_runner(cfg: Config) -> Runner:
    """The launch tools' runner: ``Runner.from_cfg``, or the config's
    ``runner_type`` if it has one, after :func:`init_distributed`; logs the
    active fixes of :mod:`beit_plugin.compat`."""
    init_distributed(cfg)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else \
        Runner.from_cfg(cfg)
    log_active_fixes()
    return runner
