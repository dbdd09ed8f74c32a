"""Loading checkpoints without ever running code from them.

Every checkpoint the plugin reads goes through :func:`safe_torch_load`:
``torch.load(weights_only=True)`` (never ``False``) with a fixed allowlist of
data-only types beyond torch's own (:func:`checkpoint_safe_globals`), enough
for MMEngine's runner checkpoints and the official BEiT ones. Our own code
(converters, tokenizer teachers, tools) calls it directly; MMEngine's
checkpoint schemes reach it through :func:`load_from_local_weights_only` and
:mod:`beit_plugin.checkpoint_schemes`, which :mod:`beit_plugin.compat`
registers where MMEngine's own loaders would refuse MMEngine's checkpoints
(torch >= 2.6) or run code from them (older torch).
"""
import argparse
import errno
import os
import pickle
import types
import zipfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, List, Optional, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = [
    'UnsafeCheckpointError', 'TruncatedCheckpointError',
    'NotACheckpointError', 'checkpoint_safe_globals', 'safe_torch_load',
    'load_from_local_weights_only'
]


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
            '(beit_plugin.checkpoint_loading.checkpoint_safe_globals), so '
            'that a checkpoint can never run code. If you trust this file, '
            'load it yourself and re-save its tensors as a plain state '
            'dict.') from err


def load_from_local_weights_only(filename: str,
                                 map_location: Any = None) -> Any:
    """MMEngine's local-file checkpoint loader, via :func:`safe_torch_load`.

    Same contract as ``mmengine.runner.checkpoint.load_from_local``.
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)
