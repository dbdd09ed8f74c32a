"""Mixed precision on a machine without a GPU: bfloat16 autocast."""
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.runner import amp as mmengine_amp

from beit_plugin.registry import OPTIM_WRAPPERS


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
    optimizer=...)``; ``tools/train.py --amp`` picks it when CUDA is
    unavailable.
    """

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """``OptimWrapper``'s context, plus bfloat16 autocast."""
        with super().optim_context(model), mmengine_amp.autocast(
                dtype=torch.bfloat16):
            yield
