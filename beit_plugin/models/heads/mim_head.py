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

        Every given row is classified and the masked ones are averaged, with
        no host sync: :class:`BEiTPretrainer` gives the masked rows (and a
        few padding rows, ``M`` per sample); all ``N`` patches work too, at
        ``N / M`` times the cost.

        Args:
            feats: patch features ``(B, M, C)`` (no CLS), or a sequence of
                them (BEiT v2: main branch, then patch aggregation); each
                adds a loss term.
            target: token ids ``(B, M)`` long.
            mask: ``(B, M)`` bool, True = masked (scored).

        Returns:
            ``loss_mim`` (``loss_mim_<i>`` for each further branch) and
            ``acc_mim``, the main branch's token accuracy (not a loss).
        """
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        labels = target.flatten()
        weight = mask.flatten().float()
        count = weight.sum()
        losses = {}
        for i, branch in enumerate(feats):
            logits = self.cls_head(branch).flatten(0, 1)
            name = 'loss_mim' if i == 0 else f'loss_mim_{i}'
            per_row = F.cross_entropy(logits.float(), labels,
                                      reduction='none')
            losses[name] = (per_row * weight).sum() / count
            if i == 0:
                with torch.no_grad():
                    right = (logits.argmax(-1) == labels).float()
                    losses['acc_mim'] = (right * weight).sum() / count
        return losses
