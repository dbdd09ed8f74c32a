"""Codebook health of tokenizer training: usage and perplexity."""
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from beit_plugin.registry import HOOKS


def usage_and_perplexity(counts: torch.Tensor) -> Tuple[float, float]:
    """Fraction of codes with a nonzero count, and ``exp(entropy)`` of the
    code distribution (``K`` when uniform, 1 when collapsed to one code).

    Args:
        counts: ``(K,)`` how often each code was used.
    """
    usage = (counts > 0).float().mean().item()
    total = counts.sum()
    if total <= 0:
        return usage, 0.
    probs = counts[counts > 0] / total
    return usage, torch.exp(-(probs * probs.log()).sum()).item()


@HOOKS.register_module()
class CodebookUsageHook(Hook):
    """Log codebook usage over a sliding window of training iterations.

    After every training iteration it reads ``last_counts`` (``(K,)`` code
    counts of that step, summed over ranks) from each module of the model
    that has one (:class:`NormEMAVectorQuantizer`, :class:`DiscreteVAE`),
    and writes to the message hub, hence to the logs and
    ``vis_data/scalars.json``:

    - ``codebook/usage``: fraction of the codes used at least once in the
      last ``window`` iterations;
    - ``codebook/perplexity``: ``exp(entropy)`` of the code distribution
      over the same window.

    With several such modules, the keys are ``codebook/<module>/usage`` ...

    Args:
        window (int): iterations ``K`` of the window. Defaults to 100.
    """
    priority = 'NORMAL'  # before the LoggerHook (BELOW_NORMAL) reads them

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise ValueError(f'window must be positive, got {window}')
        self.window = window
        self._sources: Dict[str, torch.nn.Module] = {}
        self._history: Dict[str, Deque[torch.Tensor]] = {}
        self._totals: Dict[str, torch.Tensor] = {}

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        found: List[Tuple[str, torch.nn.Module]] = [
            (name, module) for name, module in model.named_modules()
            if isinstance(getattr(module, 'last_counts', None), torch.Tensor)
        ]
        if not found:
            raise RuntimeError('CodebookUsageHook: the model has no module '
                               'with code counts (`last_counts`)')
        single = len(found) == 1
        self._sources = {
            'codebook' if single else f'codebook/{name}': module
            for name, module in found
        }
        self._history = {key: deque() for key in self._sources}
        self._totals = {}

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        for key, module in self._sources.items():
            counts = module.last_counts.detach().double().cpu()
            history = self._history[key]
            history.append(counts)
            total = self._totals.get(key, torch.zeros_like(counts)) + counts
            if len(history) > self.window:
                total -= history.popleft()
            self._totals[key] = total
            usage, perplexity = usage_and_perplexity(total)
            runner.message_hub.update_scalar(f'train/{key}/usage', usage)
            runner.message_hub.update_scalar(f'train/{key}/perplexity',
                                             perplexity)
