"""The masked-image-modeling head: visual-token prediction at masked
patches."""
from typing import Dict, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from beit_plugin.models.backbones.weight_init import PRETRAIN, init_module_
from beit_plugin.registry import MODELS

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


@MODELS.register_module()
class BEiTMIMHead(BaseModule):
    """Linear classifier from patch features to the tokenizer's vocabulary,
    trained with cross-entropy against the tokenizer's ids at masked patches
    only (BEiT v1 and v2; v2's patch-aggregation branch shares it).
    Initialised as the official pretraining model's ``lm_head``.

    Args:
        in_channels (int): feature channels ``C``.
        num_embed (int): vocabulary size of the tokenizer. Defaults to 8192.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self, in_channels: int, num_embed: int = 8192,
                 init_cfg: dict = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_embed = num_embed
        self.cls_head = nn.Linear(in_channels, num_embed)
        # the official lm_head: std 0.02 truncated at +-0.02, zero bias
        # (modeling_pretrain.py, VisionTransformerForMaskedImageModeling)
        init_module_(self.cls_head, PRETRAIN)

    def forward(self, feats: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, num_embed)`` for the ``M`` masked patches of
        ``feats`` ``(B, N, C)`` under ``mask`` ``(B, N)`` bool."""
        return self.cls_head(feats[mask])

    def loss(self, feats: Features, target: torch.Tensor,
             mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy at masked patches.

        Args:
            feats: patch features ``(B, N, C)`` (no CLS), or a sequence of
                them (BEiT v2: main branch, then patch aggregation); each
                adds a loss term.
            target: token ids ``(B, N)`` long.
            mask: ``(B, N)`` bool, True = masked.

        Returns:
            ``loss_mim`` (``loss_mim_<i>`` for each further branch) and
            ``acc_mim``, the main branch's token accuracy (not a loss).
        """
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        labels = target[mask]
        losses = {}
        for i, branch in enumerate(feats):
            logits = self(branch, mask)
            name = 'loss_mim' if i == 0 else f'loss_mim_{i}'
            losses[name] = F.cross_entropy(logits.float(), labels)
            if i == 0:
                with torch.no_grad():
                    losses['acc_mim'] = (logits.argmax(-1) == labels
                                         ).float().mean()
        return losses
