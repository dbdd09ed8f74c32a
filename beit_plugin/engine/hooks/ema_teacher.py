"""The momentum (EMA) update of an online tokenizer's teacher."""
import math
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from beit_plugin.registry import HOOKS


def cosine_momentum(base: float, end: float, iteration: int,
                    max_iters: int) -> float:
    """The official ``cosine_scheduler(base, end, ...)[iteration]``:
    ``end + (base - end) (1 + cos(pi i / I)) / 2``."""
    return end + 0.5 * (base - end) * (
        1 + math.cos(math.pi * iteration / max_iters))


@HOOKS.register_module()
class EMATeacherHook(Hook):
    """Update the teacher of :class:`~beit_plugin.models.algorithms.
    iBOTPretrainer` after each optimizer step: ``teacher <- m teacher +
    (1 - m) student``, with ``m`` rising from ``momentum`` to
    ``end_momentum`` on a cosine over the run's iterations (the official
    schedule, by iteration). Before each iteration it tells the model the
    iteration (teacher temperature warm-up, frozen last layer).

    Everything a resumed run needs is in the checkpoint: the teacher's
    weights and the loss's centres are model state, and the schedules are
    functions of the runner's iteration, which MMEngine restores.

    Args:
        momentum (float): ``m`` at iteration 0. Defaults to 0.996.
        end_momentum (float): ``m`` at the last iteration. Defaults to 1.
        max_iters (int, optional): the schedule's length; None means the
            run's ``max_iters``. Defaults to None.
    """
    # after the optimizer step of train_step, before CheckpointHook
    # (VERY_LOW) saves the iteration
    priority = 'ABOVE_NORMAL'

    def __init__(self, momentum: float = 0.996, end_momentum: float = 1.0,
                 max_iters: Optional[int] = None) -> None:
        self.momentum = momentum
        self.end_momentum = end_momentum
        self.max_iters = max_iters

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def momentum_at(self, runner, iteration: int) -> float:
        return cosine_momentum(self.momentum, self.end_momentum, iteration,
                               self.max_iters or runner.max_iters)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        self._model(runner).set_iteration(runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        # only after an optimizer step (gradient accumulation steps every
        # accumulative_counts iterations); should_update still answers for
        # the iteration that just ran
        should_update = getattr(runner.optim_wrapper, 'should_update', None)
        if should_update is not None and not should_update():
            return
        # runner.iter is still the iteration that just ran
        momentum = self.momentum_at(runner, runner.iter)
        self._model(runner).momentum_update(momentum)
        runner.message_hub.update_scalar('train/teacher_momentum', momentum)
