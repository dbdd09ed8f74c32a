"""MMEngine's default optimizer wrapper constructor, quiet about frozen
parameters.

With a ``paramwise_cfg``, ``DefaultOptimWrapperConstructor`` logs one warning
for every parameter with ``requires_grad=False`` that it leaves out: 62 lines
at the start of the demo pretraining, whose tokenizer is frozen, and hundreds
for a full-size one. This constructor builds exactly the same optimizer and
reports the frozen parameters in one line, per top-level module.
"""
import logging
import re
from collections import Counter

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from beit_plugin.registry import OPTIM_WRAPPER_CONSTRUCTORS

#: the per-parameter warning of ``DefaultOptimWrapperConstructor.add_params``
SKIPPED_WARNING = re.compile(r'\S+ is skipped since its requires_grad=False')


def frozen_summary(model: nn.Module) -> str:
    """``'target_generator (62)'``: the parameters of ``model`` with
    ``requires_grad=False``, counted per top-level module ('' if none)."""
    counts = Counter(name.split('.')[0]
                     for name, param in model.named_parameters()
                     if not param.requires_grad)
    return ', '.join(f'{module} ({count})' for module, count in counts.items())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class FrozenParamsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with one log line for the frozen
    parameters instead of one warning each.

    Same arguments and same optimizer (frozen parameters are left out of the
    parameter groups either way). Use it in a config as
    ``optim_wrapper = dict(constructor='FrozenParamsOptimWrapperConstructor',
    ...)``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        logger = MMLogger.get_current_instance()

        def keep(record: logging.LogRecord) -> bool:
            return not (record.levelno == logging.WARNING
                        and SKIPPED_WARNING.fullmatch(record.getMessage()))

        logger.addFilter(keep)
        try:
            optim_wrapper = super().__call__(model)
        finally:
            logger.removeFilter(keep)
        summary = frozen_summary(model)
        if summary:
            print_log(f'Not optimised (requires_grad=False): {summary}',
                      logger='current')
        return optim_wrapper
