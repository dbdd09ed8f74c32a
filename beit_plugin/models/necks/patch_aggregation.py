"""BEiT v2's patch aggregation: the last layer's CLS token with an early
layer's patch tokens through a shallow transformer, so that the CLS token has
to carry global information (the v2 paper's recipe)."""
from typing import Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from torch import nn

from beit_plugin.models.backbones.transformer_block import Block
from beit_plugin.models.backbones.weight_init import \
    rescale_output_projections_
from beit_plugin.registry import MODELS


@MODELS.register_module()
class BEiTV2PatchAggregation(BaseModule):
    """Patch-aggregation branch and the norm it shares with the main branch.

    Pair it with a backbone built with ``final_norm=False`` and
    ``out_indices=(early_layers - 1, -1)``: the shared ``norm`` here is the
    official model's final norm.

    Initialisation: the official ``cls_pt_layers``
    (``beit2/modeling_pretrain.py``,
    ``VisionTransformerForMaskedImageModelingCLS.__init__``) are built after
    the parent's ``self.apply(self._init_weights)`` and so keep PyTorch's
    default Linear init (weights and biases uniform in
    ``+-1/sqrt(fan_in)``); only ``fix_init_cls_pt_weight`` then divides the
    ``attn.proj`` / ``mlp.fc2`` weights of block ``i`` by
    ``sqrt(2 (early_layers + i + 1))``. This branch does the same.

    Args:
        embed_dims (int): channels ``C``.
        num_heads (int): attention heads.
        feedforward_channels (int): MLP hidden channels.
        num_layers (int): blocks in the branch. Defaults to 2.
        early_layers (int): the backbone layer (1-based) whose patch tokens
            are aggregated; used for the drop-path rates and the output
            projection scaling, as in the official code. Defaults to 9.
        backbone_layers (int): depth of the backbone. Defaults to 12.
        drop_path_rate (float): the backbone's stochastic depth rate.
            Defaults to 0.
        layer_scale_init_value (float): layer scale. Defaults to 0.1.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 num_layers: int = 2,
                 early_layers: int = 9,
                 backbone_layers: int = 12,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.1,
                 norm_eps: float = 1e-6,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.early_layers = early_layers
        total = max(backbone_layers, early_layers + num_layers)
        rates = torch.linspace(0, drop_path_rate, total).tolist()
        self.cls_pt_layers = nn.ModuleList([
            Block(embed_dims, num_heads, feedforward_channels,
                  layer_scale_init_value=layer_scale_init_value,
                  drop_path=rates[early_layers + i], norm_eps=norm_eps)
            for i in range(num_layers)
        ])
        self.norm = nn.LayerNorm(embed_dims, eps=norm_eps)
        rescale_output_projections_(self.cls_pt_layers, early_layers + 1)

    def forward(self, inputs: Sequence[torch.Tensor], grid: Tuple[int, int],
                shared_bias: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args:
            inputs: backbone outputs ``(early, last)``, each ``(B, 1+N, C)``
                before any final norm; with ``rows``, ``last`` holds those
                rows only, ``(B, R, C)`` (the backbone's ``rows``).
            grid: patch grid ``(H, W)``.
            shared_bias: the backbone's shared relative position bias
                ``(heads, 1+N, 1+N)``, if it has one.
            rows: optional ``(B, R)`` long indices into the ``1+N`` tokens,
                CLS (0) first: the branch's last block computes these rows
                only, as the backbone's did.

        Returns:
            Normed patch features of the main branch and of the aggregation
            branch: ``(B, N, C)`` each, or ``(B, R - 1, C)`` for ``rows``.
        """
        early, last = inputs[0], inputs[-1]
        x = torch.cat([last[:, :1], early[:, 1:]], dim=1)
        final = len(self.cls_pt_layers) - 1
        for i, block in enumerate(self.cls_pt_layers):
            x = block(x, grid, shared_bias, rows if i == final else None)
        return self.norm(last)[:, 1:], self.norm(x)[:, 1:]
