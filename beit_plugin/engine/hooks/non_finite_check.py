"""Stop (or skip) a training step whose loss or gradients are not finite,
and never save a checkpoint with non-finite weights."""
import logging
import math
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, print_log
from mmengine.optim import OptimWrapper

from beit_plugin.registry import HOOKS

GRAD_NORM_KEY = 'train/grad_norm'  # where OptimWrapper._clip_grad logs it
SHOWN_TENSORS = 5  # non-finite tensor names quoted in the error


def non_finite_losses(message_hub: MessageHub,
                      keys: List[str]) -> Dict[str, float]:
    """The loss terms among the logged ``keys`` whose latest value is not
    finite, e.g. ``{'loss_mim': nan}``.

    Reads the host values RuntimeInfoHook put into the message hub this
    iteration, so it costs no device synchronisation. The terms are the keys
    with ``loss`` in their name (those ``BaseModel.parse_losses`` sums); the
    total ``loss`` is named only when no term is.
    """
    values = {
        key: message_hub.get_scalar(f'train/{key}').current()
        for key in keys if 'loss' in key
    }
    bad = {
        key: value
        for key, value in values.items() if not math.isfinite(value)
    }
    terms = {key: value for key, value in bad.items() if key != 'loss'}
    return terms or bad


def non_finite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or
    an infinity."""
    return [
        name for name, tensor in state_dict.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point()
        and not bool(torch.isfinite(tensor).all())
    ]


class NonFiniteStepGuard:
    """Skips the optimizer step of an update whose loss or gradients are not
    finite.

    Installed on one :class:`OptimWrapper` instance (of any type:
    ``AmpOptimWrapper``, ``BF16AmpOptimWrapper`` ...), it wraps that
    instance's ``backward``, to note on the device whether each loss is
    finite, and ``step``, to decide before gradient clipping and
    ``optimizer.step()``. A skipped step leaves the parameters and the
    optimizer state untouched; ``update_params`` then zeroes the gradients as
    usual. With a loss scaler (``AmpOptimWrapper``) non-finite gradients are
    the scaler's to skip (it also lowers the scale), so only the loss is
    checked.

    Deciding before the step needs the decision on the host: one device
    synchronisation per step, after an all-reduce in distributed runs so
    that every rank skips together.

    Attributes:
        skip_reason: why the last step was skipped (``'non-finite loss'``,
            ``'non-finite gradients'``), '' if it was not.
    """

    def __init__(self, optim_wrapper: OptimWrapper) -> None:
        self.optim_wrapper = optim_wrapper
        self.skip_reason = ''
        self._loss_finite: Optional[torch.Tensor] = None
        self._backward = optim_wrapper.backward
        self._step = optim_wrapper.step
        optim_wrapper.backward = self.backward
        optim_wrapper.step = self.step

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """The wrapper's ``backward``, noting whether ``loss`` is finite."""
        finite = torch.isfinite(loss.detach()).all()
        # with gradient accumulation one step follows several backwards
        self._loss_finite = finite if self._loss_finite is None \
            else self._loss_finite & finite
        self._backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        """The wrapper's ``step``, unless a loss or gradient is not finite."""
        loss_finite = self._loss_finite
        self._loss_finite = None
        if loss_finite is None:  # a step without backward: nothing to judge
            loss_finite = torch.tensor(True)
        grads_finite = torch.ones_like(loss_finite)
        if getattr(self.optim_wrapper, 'loss_scaler', None) is None:
            grads = [
                param.grad
                for group in self.optim_wrapper.optimizer.param_groups
                for param in group['params'] if param.grad is not None
            ]
            grads_finite = torch.isfinite(
                torch.nn.utils.get_total_norm(grads)).to(loss_finite.device)
        bad = torch.stack([~loss_finite, ~grads_finite]).int()
        all_reduce(bad)
        bad_loss, bad_grads = bad.tolist()
        self.skip_reason = ('non-finite loss' if bad_loss else
                            'non-finite gradients' if bad_grads else '')
        if not self.skip_reason:
            self._step(**kwargs)


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop training (default) or skip the step when the loss or the gradient
    norm is NaN or infinite; refuse to save a checkpoint whose weights are.

    - ``on_non_finite='stop'``: after each iteration, the logged loss terms
      (``loss_mim``, ``decode.loss_ce`` ...) and, when ``clip_grad`` is set,
      the gradient norm (``train/grad_norm``) are read from the message hub,
      where MMEngine already put them as host numbers: no extra device
      synchronisation. A non-finite one raises :class:`FloatingPointError`
      naming the iteration (counted as the logs count it) and the terms,
      before the checkpoint hook (``VERY_LOW``) can save that iteration. The
      step itself has been applied, in memory only.
    - ``on_non_finite='skip'``: a :class:`NonFiniteStepGuard` on the runner's
      optim wrapper skips the optimizer update of such a step (one device
      synchronisation per step); each skip is logged as a warning, and
      ``max_consecutive_skips`` skips in a row stop training as above.

    With a loss scaler (fp16 ``AmpOptimWrapper``) a non-finite gradient norm
    is the scaler's normal overflow skip and is ignored; a non-finite loss is
    not an overflow of the scaled gradients and counts.

    Before any checkpoint is written (``before_save_checkpoint``, regular and
    best ones) its ``state_dict`` is checked, one pass over the weights on
    the CPU per checkpoint: a non-finite tensor raises instead, e.g. after a
    step with non-finite gradients, a finite loss and no ``clip_grad`` (no
    gradient norm to read), or a normalisation buffer updated by a NaN
    forward pass whose step was skipped.

    Distributed training: the loss terms are each rank's own; the gradient
    norm (``clip_grad``) and the skip decision are the same on every rank.

    Args:
        on_non_finite: ``'stop'`` or ``'skip'``.
        max_consecutive_skips: with ``'skip'``, the number of skipped steps in
            a row that stops training.
    """
    priority = 'HIGH'  # after RuntimeInfoHook logs the losses (VERY_HIGH)

    def __init__(self,
                 on_non_finite: str = 'stop',
                 max_consecutive_skips: int = 10) -> None:
        if on_non_finite not in ('stop', 'skip'):
            raise ValueError("on_non_finite must be 'stop' or 'skip', got "
                             f'{on_non_finite!r}')
        if max_consecutive_skips < 1:
            raise ValueError('max_consecutive_skips must be positive, got '
                             f'{max_consecutive_skips}')
        self.on_non_finite = on_non_finite
        self.max_consecutive_skips = max_consecutive_skips
        self._guard: Optional[NonFiniteStepGuard] = None
        self._consecutive_skips = 0

    def before_train(self, runner) -> None:
        if self.on_non_finite != 'skip':
            return
        if not isinstance(runner.optim_wrapper, OptimWrapper):
            raise TypeError(
                "NonFiniteCheckHook(on_non_finite='skip') needs a single "
                f'OptimWrapper, got {type(runner.optim_wrapper).__name__}')
        self._guard = NonFiniteStepGuard(runner.optim_wrapper)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        iteration = runner.iter + 1
        losses = non_finite_losses(runner.message_hub, list(outputs or {}))
        loss_problem = 'non-finite loss ({})'.format(', '.join(
            f'{key}={value}' for key, value in losses.items()))
        if self._guard is None:
            problem = loss_problem if losses else self._grad_norm_problem(
                runner)
            if problem:
                raise FloatingPointError(
                    f'{problem} at iteration {iteration}: training stopped '
                    'before saving this iteration. Lower the learning rate, '
                    "or set NonFiniteCheckHook(on_non_finite='skip') to skip "
                    'such steps.')
            return
        if not self._guard.skip_reason:
            self._consecutive_skips = 0
            return
        self._consecutive_skips += 1
        # this rank's loss terms when they are the reason, else the guard's
        # (the gradients, or another rank's loss)
        reason = loss_problem if losses else self._guard.skip_reason
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise FloatingPointError(
                f'{reason} at iteration {iteration}: '
                f'{self._consecutive_skips} steps skipped in a row, training '
                'stopped (NonFiniteCheckHook.max_consecutive_skips).')
        print_log(
            f'{reason} at iteration {iteration}: optimizer step skipped '
            f'({self._consecutive_skips} in a row)',
            logger='current',
            level=logging.WARNING)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        bad = non_finite_tensors(checkpoint['state_dict'])
        if bad:
            shown = ', '.join(bad[:SHOWN_TENSORS])
            if len(bad) > SHOWN_TENSORS:
                shown += ', ...'
            raise FloatingPointError(
                'refusing to save a checkpoint at iteration '
                f"{checkpoint['meta']['iter']}: {len(bad)} of "
                f"{len(checkpoint['state_dict'])} tensors of its state dict "
                f'are not finite ({shown})')

    @staticmethod
    def _grad_norm_problem(runner) -> str:
        """'' unless the gradient norm ``clip_grad`` logged is not finite and
        no loss scaler (whose overflow skips those) is in use."""
        hub = runner.message_hub
        if (getattr(runner.optim_wrapper, 'loss_scaler', None) is not None
                or GRAD_NORM_KEY not in hub.log_scalars):
            return ''
        grad_norm = hub.get_scalar(GRAD_NORM_KEY).current()
        if math.isfinite(grad_norm):
            return ''
        return f'non-finite gradient norm (grad_norm={grad_norm})'
