"""Random number generator states in every checkpoint, restored on resume,
and validation kept out of training's random streams."""
import logging
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from beit_plugin.registry import HOOKS

#: the checkpoint key of the states: a list indexed by rank
RNG_STATES_KEY = 'rng_states'


def rng_state() -> Dict[str, Any]:
    """The state of this process's global random number generators: torch's
    CPU generator, the current CUDA device's (None while CUDA is not
    initialised), NumPy's and Python's :mod:`random`."""
    return dict(torch=torch.get_rng_state(),
                cuda=(torch.cuda.get_rng_state()
                      if torch.cuda.is_initialized() else None),
                numpy=np.random.get_state(),
                python=random.getstate())


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators from a :func:`rng_state` result.

    The tensors may have been loaded onto a GPU (``Runner.resume`` maps a
    checkpoint to the training device); torch takes CPU byte tensors only. A
    CUDA state is skipped without CUDA: nothing on the CPU draws from it.
    """
    torch.set_rng_state(state['torch'].cpu())
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])


def checkpoint_due(runner, by_epoch: bool) -> bool:
    """Whether a ``CheckpointHook`` of ``runner`` saves at the end of this
    training iteration (``by_epoch=False``) or epoch (True).

    The conditions are the hook's own, from its ``after_train_iter`` and
    ``after_train_epoch`` (MMEngine 0.10).
    """
    for hook in runner.hooks:
        if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
            continue
        if by_epoch:
            due = hook.every_n_epochs(runner, hook.interval, hook.save_begin) \
                or hook.save_last and hook.is_last_train_epoch(runner)
        else:
            due = hook.every_n_train_iters(runner, hook.interval,
                                           hook.save_begin) \
                or hook.save_last and hook.is_last_train_iter(runner)
        if due:
            return True
    return False


class _RestoreAfterSkip:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` while the
    loop skips the ``skip`` batches a resumed run has trained already.

    Loading them draws from the global generators of this process (the
    pipeline itself with ``num_workers=0``, a new epoch's ``DataLoader``
    iterator its base seed), so ``state`` is restored after them: before the
    first batch that is trained is loaded, where an uninterrupted run is.
    Then the loop gets its own iterator back.
    """

    def __init__(self, loop: IterBasedTrainLoop, skip: int,
                 state: Dict[str, Any]) -> None:
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._skip = skip
        self._state = state

    def __iter__(self) -> '_RestoreAfterSkip':
        return self

    def __next__(self) -> Any:
        if self._skip == 0:
            set_rng_state(self._state)
            self._loop.dataloader_iterator = self._iterator
        else:
            self._skip -= 1
        return next(self._iterator)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Resume with the random state an uninterrupted run would have, and
    keep validation from drawing on training's random numbers.

    MMEngine's checkpoints hold the seed, not the generators' states: after
    ``--resume`` everything random in the main process (drop path, dropout,
    mixup / cutmix, the pipeline with ``num_workers=0``, the Gumbel noise of
    a dVAE) continues from the seeded state instead of where the run
    stopped. This hook adds, under ``checkpoint['rng_states']``, one entry
    per rank with the states of torch's CPU generator, the current CUDA
    device's, NumPy's and Python's :mod:`random`, and on resume restores
    this rank's entry where an uninterrupted run would be:

    - ``IterBasedTrainLoop``: after MMEngine has skipped the batches already
      trained ("Advance dataloader N steps"), which draws from these
      generators, and before the next batch is loaded;
    - ``EpochBasedTrainLoop``: before the epoch's ``DataLoader`` iterator is
      created.

    Validation during training runs between ``before_val`` and
    ``after_val``, which save and restore the states: an uninterrupted run
    validates after the checkpoint of the same iteration is written, a
    resumed one does not repeat that validation, and creating the validation
    ``DataLoader`` iterator draws its base seed from torch's generator
    (anything random in validation would draw too). A best checkpoint
    (``save_best``), written during validation, holds the states from
    before it.

    The data loader's samplers and workers need no state: MMEngine seeds
    them from ``randomness.seed`` (``DefaultSampler`` shuffles with
    ``seed + epoch``, ``InfiniteSampler`` with ``seed``, each worker with
    ``seed + worker_id + num_workers * rank``), and the skip replays the
    batches already trained through the same workers. Two cases are not
    exact, with a warning: ``randomness.seed=None`` (the sampler and
    workers were seeded with this run's random seed before the checkpoint
    was read; resume with ``--cfg-options randomness.seed=<the
    checkpoint's>``) and an ``EpochBasedTrainLoop`` with
    ``persistent_workers=True`` (the workers' states carry over from epoch
    to epoch in an uninterrupted run, and live in the worker processes).

    Loading a checkpoint with ``load_from`` but without ``resume`` restores
    nothing: that is a new run. A checkpoint without the states (saved
    without this hook), or saved with another number of processes, is
    resumed with a warning, as MMEngine would.

    In distributed runs the states are gathered to rank 0, which alone
    writes checkpoints, at the iterations and epochs a ``CheckpointHook``
    saves at and before each validation: one ``all_gather_object`` each
    time.

    Use it in a config as
    ``custom_hooks = [dict(type='beit_plugin.RNGStateHook')]``.
    """
    priority = 'LOW'  # after_train_iter: before CheckpointHook (VERY_LOW)

    def __init__(self) -> None:
        self._training = False
        # (epoch, iter) and every rank's states, gathered at that step
        self._due: Optional[tuple] = None
        # this rank's states when validation started, and every rank's
        self._val_state: Optional[Dict[str, Any]] = None
        self._val_states: Optional[List[Optional[dict]]] = None
        self._resumed: Optional[Dict[str, Any]] = None

    def before_train(self, runner) -> None:
        self._training = True

    def after_train(self, runner) -> None:
        self._training = False

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        self._gather_if_due(runner, by_epoch=False)

    def after_train_epoch(self, runner) -> None:
        self._gather_if_due(runner, by_epoch=True)

    def _gather_if_due(self, runner, by_epoch: bool) -> None:
        """Gather every rank's states for a checkpoint saved now (only rank
        0 runs ``before_save_checkpoint``, where no collective can be)."""
        if get_world_size() > 1 and checkpoint_due(runner, by_epoch):
            self._due = ((runner.epoch, runner.iter),
                         all_gather_object(rng_state()))

    def before_val(self, runner) -> None:
        if self._training:
            self._val_state = rng_state()
            self._val_states = all_gather_object(self._val_state)

    def after_val(self, runner) -> None:
        if self._training and self._val_state is not None:
            set_rng_state(self._val_state)
            self._val_state = self._val_states = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._val_states is not None:
            states = self._val_states
        elif get_world_size() == 1:
            states = [rng_state()]
        elif self._due is not None and \
                self._due[0] == (runner.epoch, runner.iter):
            states = self._due[1]
        else:
            # saved where no CheckpointHook saves: the other ranks' states
            # cannot be reached from here
            states = [rng_state()] + [None] * (get_world_size() - 1)
        checkpoint[RNG_STATES_KEY] = states

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return  # load_from: a new run from these weights
        self._warn_if_reseeded(runner, checkpoint)
        states = checkpoint.get(RNG_STATES_KEY)
        world_size = get_world_size()
        if states is None:
            problem = 'the checkpoint holds no random generator states ' \
                '(saved without RNGStateHook)'
        elif len(states) != world_size:
            problem = 'the checkpoint holds the random generator states of ' \
                f'{len(states)} processes, this run has {world_size}'
        elif states[get_rank()] is None:
            problem = 'the checkpoint holds no random generator state for ' \
                f'rank {get_rank()} (saved outside a CheckpointHook\'s ' \
                'schedule)'
        else:
            self._resumed = states[get_rank()]
            return
        print_log(
            f'{problem}: they are not restored, so drop path, random '
            'masks and augmentation after this resume differ from an '
            'uninterrupted run',
            logger='current',
            level=logging.WARNING)

    def before_train_epoch(self, runner) -> None:
        state, self._resumed = self._resumed, None
        if state is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop, loop.iter, state)
            return
        set_rng_state(state)
        dataloader = loop.dataloader
        if (isinstance(loop, EpochBasedTrainLoop)
                and getattr(dataloader, 'persistent_workers', False)
                and dataloader.num_workers > 0):
            print_log(
                'persistent_workers=True: the data loader workers keep their '
                'random state from one epoch to the next, in the worker '
                'processes, not in the checkpoint; the random augmentation '
                'after this resume differs from an uninterrupted run '
                '(persistent_workers=False seeds the workers alike every '
                'epoch, which a resume repeats)',
                logger='current',
                level=logging.WARNING)

    @staticmethod
    def _warn_if_reseeded(runner, checkpoint: dict) -> None:
        """Warn when the sampler and the data loader workers were seeded
        with another seed than the checkpoint's run.

        The train loop (its sampler, its ``worker_init_fn``) is built before
        the checkpoint is read; MMEngine then adopts the checkpoint's seed
        for the global generators only. The checkpoint holds rank 0's seed.
        """
        saved = checkpoint.get('meta', {}).get('seed')
        if get_rank() != 0 or saved is None or saved == runner.seed:
            return
        print_log(
            f'the checkpoint was trained with seed {saved}, while the data '
            'sampler and loader workers of this run were seeded with '
            f'{runner.seed}: the data order and the augmentation differ '
            'from an uninterrupted run; resume with --cfg-options '
            f'randomness.seed={saved} to continue exactly',
            logger='current',
            level=logging.WARNING)
