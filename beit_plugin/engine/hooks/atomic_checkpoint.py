"""MMEngine's CheckpointHook, with checkpoints that are complete or absent.

MMEngine 0.10.7's ``CheckpointHook`` writes ``iter_N.pth`` in place (a kill
while writing leaves a 0-byte or partial file under the final name) and,
with ``max_keep_ckpts``, deletes the oldest checkpoint *before* writing the
new one: with ``max_keep_ckpts=1`` a kill while saving leaves no valid
checkpoint at all, and ``--resume`` fails.
"""
import difflib
import inspect
import logging
import os
import os.path as osp
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.runner.checkpoint import find_latest_checkpoint

from beit_plugin.registry import HOOKS

#: name of :class:`AtomicLocalBackend` among MMEngine's file backends
ATOMIC_LOCAL_BACKEND = 'beit_plugin_atomic_local'
#: the file in the work dir that names the latest checkpoint (MMEngine's)
LAST_CHECKPOINT = 'last_checkpoint'


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose ``put`` writes a whole file or
    nothing.

    The bytes go to ``<name>.tmp`` in the same folder, are flushed and
    fsynced, and the file is renamed onto ``<name>`` (``os.replace``, atomic
    on POSIX and Windows); the folder is fsynced so that the rename survives
    a power loss. A kill while writing leaves at most the ``.tmp`` file
    (overwritten by the next save of that name); the file under the final
    name is the previous complete one, if any.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        filepath = str(filepath)
        folder = osp.dirname(osp.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        tmp = f'{filepath}.tmp'
        try:
            with open(tmp, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise
        fsync_folder(folder)


register_backend(ATOMIC_LOCAL_BACKEND, AtomicLocalBackend, force=True)


def fsync_folder(folder: str) -> None:
    """Persist the entries of ``folder`` (a rename in it), where the OS
    allows opening a folder (not on Windows)."""
    if os.name == 'nt':
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a file ending in a zip central directory, as
    every ``torch.save`` file does: a file cut off anywhere has none (torch
    then fails with "failed finding central directory"). Reads the end of
    the file only."""
    return osp.isfile(path) and zipfile.is_zipfile(path)


def latest_complete_checkpoint(folder: str,
                               filename_tmpl: str) -> Optional[str]:
    """The complete checkpoint of ``folder`` named by ``filename_tmpl``
    (``'iter_{}.pth'``) with the highest number, or None."""
    pattern = re.compile(
        re.escape(filename_tmpl).replace(re.escape('{}'), r'(\d+)'))
    numbered: List[Tuple[int, str]] = []
    for name in os.listdir(folder) if osp.isdir(folder) else []:
        match = pattern.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), osp.join(folder, name)))
    for _, path in sorted(numbered, reverse=True):
        if is_complete_checkpoint(path):
            return path
    return None


class _DeferredRemovals:
    """A file backend that does everything its ``backend`` does, except that
    ``remove`` / ``rmtree`` are queued in ``pending``."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pending: List[Tuple[Callable[[str], None], str]] = []

    def remove(self, path: str) -> None:
        self.pending.append((self.backend.remove, path))

    def rmtree(self, path: str) -> None:
        self.pending.append((self.backend.rmtree, path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints are never partial, and which
    never deletes a checkpoint before its successor is complete.

    Same arguments and behaviour as MMEngine's hook (``interval``,
    ``max_keep_ckpts``, ``save_best``, ``out_dir``, ``published_keys`` ...),
    with three differences:

    1. To a local folder (no ``backend_args`` / ``file_client_args`` given),
       checkpoints are written by :class:`AtomicLocalBackend`: to a
       temporary file, fsynced, then renamed onto the final name. Object
       stores need nothing: an upload only appears once complete.
    2. Outdated checkpoints (``max_keep_ckpts``) and the previous best one
       (``save_best``) are deleted after the new checkpoint is in place and
       ``last_checkpoint`` names it, not before; if saving fails, they stay.
    3. Auto-resume (``resume=True`` without ``load_from``, ``--resume``
       without a path): if ``last_checkpoint`` names a missing or truncated
       file (a checkpoint written before this hook was used, a power loss
       on a file system that lost unsynced data), training resumes from the
       latest complete ``filename_tmpl`` checkpoint of that folder instead,
       with a warning.

    4. An option MMEngine's hook does not know (a misspelt ``intervl``) is
       refused when the hook is built: MMEngine's passes such keys on to
       ``Runner.save_checkpoint``, so the run trains, then fails at its
       first save with nothing written.

    Use it in a config as ``default_hooks = dict(checkpoint=dict(
    type='beit_plugin.AtomicCheckpointHook', ...))``.
    """

    def __init__(self, *args, **kwargs) -> None:
        known = inspect.signature(CheckpointHook.__init__).parameters
        unknown = sorted(key for key in kwargs if key not in known)
        if unknown:
            hints = [
                f'{key!r} (did you mean {close[0]!r}?)' if close else repr(key)
                for key in unknown
                for close in [difflib.get_close_matches(key, known, n=1)]
            ]
            raise TypeError(
                f'default_hooks.checkpoint: unknown option '
                f'{", ".join(hints)}; CheckpointHook takes '
                + ', '.join(k for k in known if k not in ('self', 'kwargs')))
        super().__init__(*args, **kwargs)

    def before_run(self, runner) -> None:
        # Runner.load_or_resume, which runs after before_run, resumes from
        # the file last_checkpoint names when resume is set without
        # load_from; a load_from set here is resumed from instead
        if not runner._resume or runner._load_from is not None:
            return
        if not osp.isfile(osp.join(runner.work_dir, LAST_CHECKPOINT)):
            return  # nothing to resume: MMEngine starts from scratch
        latest = find_latest_checkpoint(runner.work_dir)
        if is_complete_checkpoint(latest):
            return
        folder = osp.dirname(latest) or runner.work_dir
        fallback = latest_complete_checkpoint(folder, self.filename_tmpl)
        if fallback is None:
            return  # loading `latest` will say what is wrong with it
        print_log(
            f'{LAST_CHECKPOINT} names {latest!r}, which is missing or '
            f'truncated: resuming from {fallback!r}, the latest complete '
            'checkpoint',
            logger='current',
            level=logging.WARNING)
        runner._load_from = fallback

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if (self.backend_args is None and self.file_client_args is None
                and isinstance(self.file_backend, LocalBackend)):
            # runner.save_checkpoint writes through the backend these name
            self.backend_args = dict(backend=ATOMIC_LOCAL_BACKEND)
            self.file_backend = AtomicLocalBackend()

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        with self._removals_after_save():
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._removals_after_save():
            super()._save_best_checkpoint(runner, metrics)

    @contextmanager
    def _removals_after_save(self) -> Iterator[None]:
        """Run the block with deletions queued; carry them out once it has
        finished without an error (the new files and ``last_checkpoint``
        are written by then)."""
        if isinstance(self.file_backend, _DeferredRemovals):
            yield  # nested: _save_best_checkpoint saves the latest again
            return
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            yield
        finally:
            self.file_backend = backend
        # MMEngine deleted first, so it never removed a file it had just
        # written; deleting after, never remove one the hook points to
        current = {
            self.last_ckpt,
            getattr(self, 'best_ckpt_path', None),
            *getattr(self, 'best_ckpt_path_dict', {}).values()
        }
        for remove, path in deferred.pending:
            if path not in current:
                remove(path)
