"""The MIM head of BEiT's pixel-regression ablation."""
from typing import Dict, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from beit_plugin.models.backbones.weight_init import PRETRAIN, init_module_
from beit_plugin.registry import MODELS

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


@MODELS.register_module()
class PixelRegressionHead(BaseModule):
    """Linear map from patch features to the patch's (normalised) pixels,
    trained with the mean squared error at masked patches only: the
    drop-in replacement of :class:`BEiTMIMHead` when the target generator is
    :class:`~beit_plugin.models.targets.PatchPixels`.

    Args:
        in_channels (int): feature channels ``C``.
        out_channels (int): values per patch, ``patch_size ** 2 * 3``.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 init_cfg: dict = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.out_channels = out_channels
        self.reg_head = nn.Linear(in_channels, out_channels)
        # as the official lm_head it replaces (modeling_pretrain.py)
        init_module_(self.reg_head, PRETRAIN)

    def forward(self, feats: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Predictions ``(M, out_channels)`` for the ``M`` masked patches of
        ``feats`` ``(B, N, C)`` under ``mask`` ``(B, N)`` bool."""
        return self.reg_head(feats[mask])

    def loss(self, feats: Features, target: torch.Tensor,
             mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Mean squared error at masked patches (every given row is
        predicted and the masked ones averaged, as :class:`BEiTMIMHead`).

        Args:
            feats: patch features ``(B, M, C)`` (no CLS), or a sequence of
                them (BEiT v2's patch aggregation); each adds a loss term.
            target: ``(B, M, out_channels)`` pixels.
            mask: ``(B, M)`` bool, True = masked (scored).

        Returns:
            ``loss_mim`` (``loss_mim_<i>`` for each further branch).

        Raises:
            ValueError: if the target's last size is not ``out_channels``.
        """
        if target.shape[-1] != self.out_channels:
            raise ValueError(
                f'pixel target of shape {tuple(target.shape)} does not have '
                f'out_channels={self.out_channels} values per patch')
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        expected = target.float()
        weight = mask.float()
        count = weight.sum()
        losses = {}
        for i, branch in enumerate(feats):
            per_row = F.mse_loss(self.reg_head(branch).float(), expected,
                                 reduction='none').mean(-1)
            name = 'loss_mim' if i == 0 else f'loss_mim_{i}'
            losses[name] = (per_row * weight).sum() / count
        return losses
