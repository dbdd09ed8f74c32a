"""Fixes that make the upstream OpenMMLab packages work on torch 2.14, numpy 2.

This module is the single place where ``beit_plugin`` adapts MMEngine 0.10,
MMPretrain 1.2, MMSegmentation 1.2 and mmcv(-lite) 2.1 to the current stack.
``import beit_plugin`` imports it first and :func:`apply_fixes` runs once (it
is idempotent), before any upstream model, dataset or runner is built:

1. :func:`install_mmcv_ops_stand_in`: mmcv-lite has no compiled ``mmcv._ext``,
   so ``import mmcv.ops`` fails and with it ``import mmseg.models`` /
   ``mmseg.utils`` / ``mmseg.datasets`` (they import ``point_sample`` and
   ``sigmoid_focal_loss`` from ``mmcv.ops`` unguarded). Only then, a
   pure-PyTorch stand-in becomes ``mmcv.ops``; a full mmcv is never shadowed.
2. :func:`register_weights_only_checkpoint_loader`: torch >= 2.6 defaults to
   ``torch.load(weights_only=True)``, which refuses MMEngine's own runner
   checkpoints (their ``message_hub`` holds ``HistoryBuffer`` objects and
   numpy arrays / scalars). Local checkpoints are loaded by
   :func:`safe_torch_load`: still ``weights_only=True``, with a minimal
   allowlist of data-only types; a pickle that would run code is refused.
3. :class:`BF16AmpOptimWrapper`: MMEngine's ``AmpOptimWrapper`` asserts that a
   GPU (or NPU/MLU/MUSA) is present, so AMP training cannot start on a CPU.
   This wrapper autocasts to bfloat16 (which needs no loss scaling) and works
   on CPU; ``tools/train.py --amp`` picks it when CUDA is unavailable.
4. numpy 2 removed ``np.in1d``, which MMPretrain's retrieval metrics
   (``RetrievalRecall``, ``RetrievalAveragePrecision``) still call. They are
   not on BEiT's path, so nothing is patched; the metrics that are
   (``mmpretrain.evaluation.Accuracy``, ``mmseg.evaluation.IoUMetric``) work
   unchanged with numpy 2.
5. :func:`skip_cuda_set_device_without_cuda`: MMEngine's ``init_dist`` calls
   ``torch.cuda.set_device`` for every launcher, which raises on a machine
   without a GPU even with the ``gloo`` backend. It is skipped when CUDA is
   unavailable. The config side of CPU distributed training (``gloo``, DDP with
   ``device_ids=None``) is :func:`configure_cpu_distributed`, which the launch
   tools call.
6. :func:`replace_pkg_resources_helpers`: MMEngine's ``is_installed`` /
   ``get_installed_path`` import ``pkg_resources``, which setuptools >= 81 no
   longer ships, so a config inheriting ``mmpretrain::`` / ``mmseg::`` bases
   fails to load. They are replaced by :mod:`importlib.metadata` versions,
   whose ``get_installed_path`` also finds the package of an editable
   install (``beit_plugin::`` bases in a checkout).
   (A config is parsed before its ``custom_imports`` run, so tools that do
   not import ``beit_plugin`` first, e.g. MMSegmentation's own
   ``tools/train.py``, still need ``pkg_resources``: ``setup.py`` therefore
   keeps setuptools < 81.)
7. :func:`drop_scope_from_collate_fn`: a config inheriting an ``mmpretrain::``
   base gets ``_scope_='mmpretrain'`` in every dict of that base, the
   dataloader's ``collate_fn=dict(type='default_collate')`` included;
   MMEngine's ``Runner.build_dataloader`` passes that key on to the function
   (``default_collate() got an unexpected keyword argument '_scope_'``).
   The key is dropped before the collate function is built.
8. :func:`revert_sync_batchnorm_without_cuda`: MMSegmentation's models use
   ``SyncBN`` (``nn.SyncBatchNorm``). MMEngine's ``Runner.wrap_model``
   reverts it to BN only when training is not distributed; under a
   distributed launch on a machine without CUDA (``tools/dist_train.sh`` with
   gloo) ``DistributedDataParallel`` refuses the model (``SyncBatchNorm
   layers only work with GPU modules``). When CUDA is unavailable, the model
   is reverted to BN before it is wrapped (each rank then normalises over
   its own batch), and a ``sync_bn`` of the config is ignored, with a
   warning. With CUDA nothing changes.
"""
import argparse
import copy
import errno
import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import pickle
import sys
import types
import zipfile
from contextlib import contextmanager
from typing import (IO, Any, Callable, Dict, Iterator, List, NoReturn,
                    Optional, Union)
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.runner import Runner
from mmengine.runner import amp as mmengine_amp
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.parallel import DistributedDataParallel

from .registry import OPTIM_WRAPPERS

# ---------------------------------------------------------------------------
# 1. mmcv-lite: a pure-PyTorch stand-in for ``mmcv.ops``
# ---------------------------------------------------------------------------


def _missing_compiled_op(name: str) -> ModuleNotFoundError:
    """The error raised for an ``mmcv.ops`` member the stand-in lacks.

    It is a :class:`ModuleNotFoundError` (an :class:`ImportError`) because
    upstream code probes optional ops with
    ``try: from mmcv.ops import X / except ModuleNotFoundError:``.
    """
    return ModuleNotFoundError(
        f'mmcv.ops.{name} needs the compiled ops of full mmcv '
        '(`pip install "mmcv>=2.0.0,<2.2.0"` in place of mmcv-lite). This '
        "environment has mmcv-lite, whose `mmcv.ops` is beit_plugin's "
        'pure-PyTorch stand-in, which only provides `point_sample`.',
        name='mmcv._ext')


def point_sample(input: torch.Tensor,
                 points: torch.Tensor,
                 align_corners: bool = False,
                 **kwargs) -> torch.Tensor:
    """Sample ``input`` at ``points``, as ``mmcv.ops.point_sample`` does.

    Args:
        input (torch.Tensor): Feature map, shape (N, C, H, W).
        points (torch.Tensor): Point coordinates normalised to
            ``[0, 1] x [0, 1]`` in (x, y) order, shape (N, P, 2) or
            (N, Hgrid, Wgrid, 2).
        align_corners (bool): Passed to
            :func:`torch.nn.functional.grid_sample`.
        **kwargs: Other arguments of ``grid_sample`` (``mode``,
            ``padding_mode``).

    Returns:
        torch.Tensor: Shape (N, C, P) or (N, C, Hgrid, Wgrid).
    """
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(
        input, points * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def sigmoid_focal_loss(*args, **kwargs) -> NoReturn:
    """Placeholder for the compiled ``mmcv.ops.sigmoid_focal_loss``.

    MMSegmentation's ``FocalLoss`` only calls it for CUDA tensors (on CPU it
    uses its own PyTorch implementation), so importing it must work while
    calling it needs full mmcv.

    Raises:
        ModuleNotFoundError: Always, saying that full mmcv is needed.
    """
    raise _missing_compiled_op('sigmoid_focal_loss')


class _MmcvOpsStandIn(types.ModuleType):
    """The ``mmcv.ops`` module used when mmcv's compiled ops are missing."""

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith('__'):  # module protocol (__path__, __file__, ...)
            raise AttributeError(
                f"beit_plugin's stand-in module 'mmcv.ops' has no attribute "
                f'{name!r}')
        raise _missing_compiled_op(name)


def _mmcv_lacks_compiled_ops() -> bool:
    """Whether mmcv is installed without its compiled ``mmcv._ext``."""
    if importlib.util.find_spec('mmcv') is None:
        return False
    return importlib.util.find_spec('mmcv._ext') is None


def install_mmcv_ops_stand_in() -> bool:
    """Make ``import mmcv.ops`` work on mmcv-lite.

    When mmcv is installed without ``mmcv._ext`` (mmcv-lite), a pure-PyTorch
    module becomes ``sys.modules['mmcv.ops']`` (and ``mmcv.ops``). It provides
    :func:`point_sample` (a real implementation) and
    :func:`sigmoid_focal_loss` (raises, needs full mmcv); any other member
    raises :class:`ModuleNotFoundError` naming full mmcv, which is what
    upstream ``try/except ModuleNotFoundError`` imports expect. With a full
    mmcv, or without mmcv, nothing is changed.

    Returns:
        bool: Whether the stand-in is in place.
    """
    if isinstance(sys.modules.get('mmcv.ops'), _MmcvOpsStandIn):
        return True
    if not _mmcv_lacks_compiled_ops():
        return False
    import mmcv
    ops = _MmcvOpsStandIn(
        'mmcv.ops', 'Pure-PyTorch stand-in for mmcv.ops (beit_plugin.compat)')
    ops.__spec__ = importlib.machinery.ModuleSpec(
        'mmcv.ops', loader=None, origin=__name__)
    ops.point_sample = point_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
    return True


# ---------------------------------------------------------------------------
# 2. Checkpoints: torch.load(weights_only=True) with data-only extra types
# ---------------------------------------------------------------------------


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs more than the data-only types we allow to load."""


_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """``getattr`` for the unpickler, restricted to HistoryBuffer statistics.

    ``HistoryBuffer.__getstate__`` stores its statistics methods
    (``HistoryBuffer.min`` ...), which pickle (protocol 2, as ``torch.save``
    uses) writes as ``builtins.getattr(HistoryBuffer, 'min')``. Allowing
    ``getattr`` itself would let a pickle reach any attribute of any allowed
    type (e.g. ``numpy.ndarray.tofile``), so only these four are resolved.
    """
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed: only the statistics '
        f'methods {_HISTORY_BUFFER_STATISTICS} of MMEngine\'s HistoryBuffer')


def _numpy_multiarray() -> types.ModuleType:
    """``numpy._core.multiarray`` (numpy 2) or ``numpy.core.multiarray``."""
    return np._core.multiarray if hasattr(np, '_core') else np.core.multiarray


def checkpoint_safe_globals() -> List[Union[Callable, tuple]]:
    """The types an MMEngine runner checkpoint needs beyond torch's defaults.

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on a
    checkpoint saved by ``Runner``: ``HistoryBuffer`` and numpy's array,
    scalar and dtype reconstruction (from ``message_hub``), plus
    ``builtins.getattr`` (from ``HistoryBuffer``), which is replaced by the
    restricted :func:`_history_buffer_statistic`. Plus ``argparse.Namespace``,
    which the official microsoft/unilm BEiT training scripts save under
    ``args`` in every checkpoint: it unpickles as a plain attribute bag
    (no ``__setstate__``), its values through the same restricted
    unpickler. All of them only rebuild data; none can call arbitrary code.
    """
    multiarray = _numpy_multiarray()
    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
               np.uint16, np.uint32, np.uint64, np.float16, np.float32,
               np.float64)
    return [
        argparse.Namespace,
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in numeric),
    ]


@contextmanager
def _checkpoint_safe_globals() -> Iterator[None]:
    """Allow :func:`checkpoint_safe_globals` within the block.

    Entries a user already allowed stay allowed after the block
    (``torch.serialization.safe_globals`` would remove them on exit).
    """
    already = torch.serialization.get_safe_globals()
    extra = [g for g in checkpoint_safe_globals() if g not in already]
    with torch.serialization.safe_globals(extra):
        yield


class TruncatedCheckpointError(RuntimeError):
    """A checkpoint file that ends early (saving it was interrupted)."""


class NotACheckpointError(ValueError):
    """A file given as a checkpoint that ``torch.save`` did not write."""


def _head(f: Union[str, os.PathLike, IO[bytes]], size: int) -> bytes:
    """The first ``size`` bytes of a path or of a file object (whose
    position is kept)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, 'rb') as file:
            return file.read(size)
    position = f.tell()
    head = f.read(size)
    f.seek(position)
    return head


def safe_torch_load(f: Union[str, os.PathLike, IO[bytes]],
                    map_location: Any = None,
                    source: Optional[str] = None) -> Any:
    """``torch.load`` a checkpoint without ever running code from it.

    Loads with ``weights_only=True`` (never ``False``), allowing only
    :func:`checkpoint_safe_globals` beyond torch's own tensor types, so that
    MMEngine runner checkpoints (resume, ``load_from``) load.

    Args:
        f: Path or binary file object.
        map_location: As for :func:`torch.load`.
        source: Where ``f`` came from (e.g. its URL), named in a refusal;
            defaults to ``f``'s name.

    Returns:
        The loaded object.

    Raises:
        UnsafeCheckpointError: The file needs another type or function, i.e.
            it would run code or is not a plain (MMEngine) checkpoint.
        TruncatedCheckpointError: The file is a truncated checkpoint
            (empty, or cut off while it was being written).
        NotACheckpointError: The file is neither of torch.save's formats
            (an image, a text file ...).
    """
    head = _head(f, 2)
    # torch.save writes a zip archive ("PK"), or in its legacy format a
    # pickle (protocol 2: b"\x80\x02"); anything else would fail inside
    # torch's legacy reader with e.g. "KeyError: 101", or look like a pickle
    # refused as unsafe
    if head and not head.startswith((b'PK', b'\x80')):
        name = source or getattr(f, 'name', f)
        raise NotACheckpointError(
            f'{str(name)!r} is not a checkpoint: it begins with {head!r}, '
            'while a file written by torch.save is a zip archive (or, in '
            'the legacy format, a pickle). Was an image, a config or a log '
            'given as the checkpoint?')
    try:
        with _checkpoint_safe_globals():
            return torch.load(f, map_location=map_location, weights_only=True)
    except (EOFError, OSError, RuntimeError, ValueError) as err:
        # torch.save writes a zip archive; cut off, it lacks the archive's end
        # record and torch fails by where it was cut: EOFError (empty file),
        # "failed reading zip archive", or a negative seek in the central
        # directory (EINVAL on a file, ValueError on a buffer). Other errors
        # of these types, or of an archive with its end record, are not
        # truncation.
        cut_archive = (
            isinstance(err, RuntimeError)
            and 'failed reading zip archive' in str(err)
            or isinstance(err, OSError) and err.errno == errno.EINVAL
            or isinstance(err, ValueError) and 'negative seek' in str(err))
        if not (isinstance(err, EOFError)
                or cut_archive and not zipfile.is_zipfile(f)):
            raise
        name = source or getattr(f, 'name', f)
        raise TruncatedCheckpointError(
            f'Cannot load {str(name)!r}: truncated checkpoint (the file ends '
            'early, as when saving it was interrupted: killed, out of disk '
            'space). Load an earlier checkpoint.') from err
    except pickle.UnpicklingError as err:
        name = source or getattr(f, 'name', f)
        # torch's first line names what is refused; drop its advice to allow it
        reason = str(err).split('WeightsUnpickler error:')[-1].strip()
        reason = reason.splitlines()[0].split(' Please use')[0]
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {str(name)!r}: it needs a type or '
            f'function that is not allowed ({reason}). beit_plugin loads '
            'checkpoints with torch.load(weights_only=True) and a fixed '
            'allowlist of data-only types '
            '(beit_plugin.compat.checkpoint_safe_globals), so that a '
            'checkpoint can never run code. If you trust this file, load it '
            'yourself and re-save its tensors as a plain state dict.') from err


def load_from_local_weights_only(filename: str,
                                 map_location: Any = None) -> Any:
    """MMEngine's local-file checkpoint loader, via :func:`safe_torch_load`.

    Same contract as ``mmengine.runner.checkpoint.load_from_local``.
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def register_weights_only_checkpoint_loader() -> None:
    """Make :func:`load_from_local_weights_only` MMEngine's local loader.

    ``CheckpointLoader`` serves every path without a URL scheme (prefix
    ``''``) with it, so ``Runner.resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained', checkpoint=<local file>)`` all load
    with ``weights_only=True``. The remote schemes (``http://``, ``s3://``,
    ...) are served by :mod:`beit_plugin.checkpoint_schemes`.
    """
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_weights_only, force=True)


# ---------------------------------------------------------------------------
# 3. AMP on CPU
# ---------------------------------------------------------------------------


@OPTIM_WRAPPERS.register_module()
class BF16AmpOptimWrapper(OptimWrapper):
    """Mixed-precision training with bfloat16 autocast, also on CPU.

    MMEngine 0.10.7's ``AmpOptimWrapper`` asserts in ``__init__`` that a GPU
    (or NPU/MLU/MUSA) is present, even with ``dtype='bfloat16'``, so it
    cannot be built on a CPU-only machine. This wrapper runs the forward pass
    under ``mmengine.runner.amp.autocast(dtype=torch.bfloat16)`` on the
    current device (CPU autocast supports bfloat16 only). bfloat16 has
    float32's exponent range, so no loss scaler is needed and ``backward`` /
    ``step`` are ``OptimWrapper``'s.

    Use it as ``optim_wrapper=dict(type='beit_plugin.BF16AmpOptimWrapper',
    optimizer=...)``.
    """

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """``OptimWrapper``'s context, plus bfloat16 autocast."""
        with super().optim_context(model), mmengine_amp.autocast(
                dtype=torch.bfloat16):
            yield


# ---------------------------------------------------------------------------
# 4. numpy 2: ``np.in1d`` is gone; only MMPretrain's retrieval metrics use it,
#    which BEiT does not. Nothing to fix (see the module docstring).
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# 5. Distributed training on CPU
# ---------------------------------------------------------------------------

_INIT_DIST_FUNCTIONS = ('_init_dist_pytorch', '_init_dist_mpi',
                        '_init_dist_slurm')


def _skip_set_device(device: Any) -> None:
    """Stands in for ``torch.cuda.set_device`` when there is no CUDA."""


def _skipping_cuda_set_device(init_fn: Callable) -> Callable:
    """Wrap one of MMEngine's ``_init_dist_*`` functions (see caller)."""

    @functools.wraps(init_fn)
    def init_dist_without_cuda(*args, **kwargs) -> None:
        if torch.cuda.is_available():
            return init_fn(*args, **kwargs)
        with mock.patch.object(torch.cuda, 'set_device', _skip_set_device):
            return init_fn(*args, **kwargs)

    return init_dist_without_cuda


def skip_cuda_set_device_without_cuda() -> None:
    """Let MMEngine's ``init_dist`` work on machines without CUDA.

    ``mmengine.dist.utils._init_dist_pytorch`` / ``_init_dist_mpi`` /
    ``_init_dist_slurm`` call ``torch.cuda.set_device(local_rank)`` before
    ``init_process_group``, which raises (``Found no NVIDIA driver``) without
    a GPU, whatever the backend. When CUDA is unavailable that call is
    skipped; everything else MMEngine does is unchanged. ``init_dist`` looks
    these functions up at call time, so it picks up the wrapped ones.
    """
    from mmengine.dist import utils as dist_utils
    for name in _INIT_DIST_FUNCTIONS:
        init_fn = getattr(dist_utils, name)
        if not hasattr(init_fn, '__wrapped__'):
            setattr(dist_utils, name, _skipping_cuda_set_device(init_fn))


def configure_cpu_distributed(cfg: Config) -> None:
    """Adapt a config's distributed settings to a machine without CUDA.

    Does nothing when CUDA is available or ``cfg.launcher`` is ``'none'``.
    Otherwise sets ``env_cfg.dist_cfg.backend='gloo'`` (NCCL needs GPUs) and
    makes the model wrapper a ``DistributedDataParallel`` with
    ``device_ids=None``, which DDP requires for CPU modules (MMEngine's
    ``Runner`` passes ``device_ids=[LOCAL_RANK]`` unless the wrapper config
    says otherwise). A ``model_wrapper_cfg`` of the config is kept; only
    ``device_ids=None`` is added to it if it is a DDP wrapper.

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
    wrapper_type = MMENGINE_MODEL_WRAPPERS.get(
        wrapper_cfg.get('type', 'MMDistributedDataParallel'))
    if isinstance(wrapper_type, type) and issubclass(wrapper_type,
                                                     DistributedDataParallel):
        wrapper_cfg.setdefault('device_ids', None)


# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# 6. setuptools >= 81: no ``pkg_resources`` for MMEngine's package helpers
# ---------------------------------------------------------------------------


def _distribution(package: str):
    """The installed distribution named ``package``, or None."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """Whether ``package`` is installed (as a distribution, or importable)."""
    if _distribution(package) is not None:
        return True
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None


def _module_dir(module: str) -> Optional[str]:
    """The folder the import system loads ``module`` from, or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def get_installed_path(package: str) -> str:
    """The folder of ``package``'s top-level module, like MMEngine's helper
    (``mmcv-lite`` -> ``.../site-packages/mmcv``).

    An editable install (PEP 660) leaves only metadata and an import hook
    beside other packages, so its module is not next to its metadata, where
    MMEngine's helper looks (``beit-plugin`` -> ``<checkout>/beit_plugin``, not
    ``.../site-packages/beit_plugin``): then the import system says where it
    is.
    """
    dist = _distribution(package)
    if dist is None:
        path = _module_dir(package)
        if path is None:
            raise importlib.metadata.PackageNotFoundError(package)
        return path
    location = str(dist.locate_file(''))
    path = os.path.join(location, package)
    if os.path.exists(path):
        return path
    top_level = (dist.read_text('top_level.txt') or '').split()
    module = top_level[0] if top_level else package.replace('-', '_')
    path = os.path.join(location, module)
    if os.path.exists(path):
        return path
    return _module_dir(module) or path


def replace_pkg_resources_helpers() -> None:
    """Use :func:`is_installed` / :func:`get_installed_path` in MMEngine in
    place of its own, which need ``pkg_resources`` (and are slow with it)."""
    from mmengine import utils as mmengine_utils
    from mmengine.config import config as mmengine_config
    from mmengine.utils import package_utils
    for module in (package_utils, mmengine_utils, mmengine_config):
        module.is_installed = is_installed
        module.get_installed_path = get_installed_path


# ---------------------------------------------------------------------------
# 7. ``_scope_`` in an inherited ``collate_fn``
# ---------------------------------------------------------------------------


def _without_collate_scope(dataloader: Any) -> Any:
    """A dataloader config whose ``collate_fn`` dict has no ``_scope_``."""
    if not isinstance(dataloader, dict):
        return dataloader
    collate_fn = dataloader.get('collate_fn')
    if not isinstance(collate_fn, dict) or '_scope_' not in collate_fn:
        return dataloader
    dataloader = copy.copy(dataloader)
    dataloader['collate_fn'] = {
        k: v for k, v in collate_fn.items() if k != '_scope_'}
    return dataloader


def drop_scope_from_collate_fn() -> None:
    """Make ``Runner.build_dataloader`` ignore a ``collate_fn``'s
    ``_scope_`` (the original stays reachable as ``__wrapped__``)."""
    original = Runner.build_dataloader
    if hasattr(original, '__wrapped__'):
        return

    @functools.wraps(original)
    def build_dataloader(dataloader: Any, *args, **kwargs):
        return original(_without_collate_scope(dataloader), *args, **kwargs)

    Runner.build_dataloader = staticmethod(build_dataloader)


# ---------------------------------------------------------------------------
# 8. SyncBN under distributed training without CUDA
# ---------------------------------------------------------------------------


def _has_sync_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def revert_sync_batchnorm_without_cuda() -> None:
    """Make ``Runner.wrap_model`` revert SyncBN to BN under a distributed
    launch when CUDA is unavailable (the original stays reachable as
    ``__wrapped__``).

    ``DistributedDataParallel`` raises ``SyncBatchNorm layers only work with
    GPU modules`` for a CPU model holding ``nn.SyncBatchNorm``; MMEngine only
    reverts SyncBN when training is not distributed. Without CUDA the model's
    SyncBN layers become ``BatchNormXd`` (weights and running statistics
    kept, so checkpoints are unchanged) and ``cfg.sync_bn`` (which would
    convert BN to SyncBN again) is skipped, each with a logged warning.
    """
    from mmengine.model import is_model_wrapper, revert_sync_batchnorm
    from mmengine.runner import runner as runner_module

    original = Runner.wrap_model
    if hasattr(original, '__wrapped__'):
        return

    @functools.wraps(original)
    def wrap_model(self, model_wrapper_cfg, model):
        if (torch.cuda.is_available() or not self.distributed
                or is_model_wrapper(model)):
            return original(self, model_wrapper_cfg, model)
        if _has_sync_batchnorm(model):
            print_log(
                'CUDA is not available: SyncBN layers are reverted to BN for '
                'distributed training on the CPU (DistributedDataParallel '
                'only supports SyncBN on GPUs); each process normalises over '
                'its own batch.',
                logger='current',
                level=logging.WARNING)
            model = revert_sync_batchnorm(model)
        if self.cfg.get('sync_bn') is not None:
            print_log(
                f'CUDA is not available: sync_bn={self.cfg.sync_bn!r} is '
                'ignored (SyncBN needs GPUs).',
                logger='current',
                level=logging.WARNING)
        with mock.patch.object(runner_module, 'convert_sync_batchnorm',
                               lambda module, *args, **kwargs: module):
            return original(self, model_wrapper_cfg, model)

    Runner.wrap_model = wrap_model


def apply_fixes() -> None:
    """Apply every import-time fix of this module; safe to call again."""
    install_mmcv_ops_stand_in()
    replace_pkg_resources_helpers()
    register_weights_only_checkpoint_loader()
    skip_cuda_set_device_without_cuda()
    drop_scope_from_collate_fn()
    revert_sync_batchnorm_without_cuda()


apply_fixes()
