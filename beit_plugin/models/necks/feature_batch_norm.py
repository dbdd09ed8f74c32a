"""The linear-probing neck: plain average pooling and BatchNorm without
affine parameters in front of a linear classifier."""
from typing import Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from beit_plugin.registry import MODELS


@MODELS.register_module()
class FeatureBatchNorm(BaseModule):
    """``BatchNorm1d(affine=False)`` on frozen features, for linear probing.

    Linear probing as in MAE and BEiT v2: the frozen features are
    standardised by a BatchNorm without learnable scale and shift (its running
    statistics are the only state it keeps), then a linear head classifies
    them. Nothing here is learnable, so with a frozen backbone only the head
    trains.

    Each input is ``(B, C)`` (e.g. the backbone's ``cls_token``) or
    ``(B, C, H, W)`` (``featmap``), which is first averaged over ``H, W``:
    the plain mean of the patch tokens, without the ``fc_norm`` LayerNorm
    that ``out_type='avg_featmap'`` applies (that LayerNorm belongs to
    fine-tuning, is not in a pretraining checkpoint and, frozen at its
    initial values, would add a per-sample normalisation).

    Args:
        in_channels (int): feature channels ``C``.
        eps (float): BatchNorm epsilon. Defaults to 1e-6 (as MAE).
        momentum (float): BatchNorm momentum. Defaults to 0.1.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self, in_channels: int, eps: float = 1e-6,
                 momentum: float = 0.1, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.bn = nn.BatchNorm1d(in_channels, eps=eps, momentum=momentum,
                                 affine=False)

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]
                ) -> Tuple[torch.Tensor, ...]:
        """Args:
            inputs: a tensor or a tuple of tensors, ``(B, C)`` or
                ``(B, C, H, W)``.

        Returns:
            A tuple of ``(B, C)`` standardised features, one per input.
        """
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs, )
        outs = []
        for x in inputs:
            if x.dim() == 4:
                x = x.mean(dim=(2, 3))
            if x.dim() != 2 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f'FeatureBatchNorm expects (B, {self.in_channels}) or '
                    f'(B, {self.in_channels}, H, W) features, got '
                    f'{tuple(x.shape)}')
            outs.append(self.bn(x))
        return tuple(outs)
