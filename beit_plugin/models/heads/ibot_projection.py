"""The iBOT (DINO-style) projection head: the online tokenizer's last part."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from beit_plugin.registry import MODELS


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation per output row:
    ``weight = g * v / ||v||`` (``torch.nn.utils.weight_norm(..., dim=0)``,
    with the same parameter names ``weight_g`` ``(out, 1)`` and ``weight_v``
    ``(out, in)`` as the official iBOT / DINO checkpoints).

    Args:
        in_features (int): input channels.
        out_features (int): output channels.
        fix_norm (bool): keep ``g`` at 1 (``requires_grad=False``): the
            official ``norm_last_layer=True``. Defaults to True.
    """

    def __init__(self, in_features: int, out_features: int,
                 fix_norm: bool = True) -> None:
        super().__init__()
        weight = torch.empty(out_features, in_features)
        # PyTorch's nn.Linear default, as the official head's last layer
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1),
                                     requires_grad=not fix_norm)

    def weight(self, detach: bool = False) -> torch.Tensor:
        """The normalised ``(out, in)`` weight; ``detach`` cuts it from the
        graph (the official ``freeze_last_layer``: no gradient, so the
        optimizer skips it, weight decay included)."""
        g, v = self.weight_g, self.weight_v
        if detach:
            g, v = g.detach(), v.detach()
        return g * v / v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        return F.linear(x, self.weight(detach))


@MODELS.register_module()
class iBOTProjectionHead(BaseModule):
    """iBOT's projection head (``iBOTHead`` of the official code): an MLP
    (``num_layers`` linear layers with GELU, the last into a
    ``bottleneck_channels`` space), L2 normalisation, then a weight-normalised
    bias-free linear layer to the ``out_channels`` prototypes. The MLP is
    shared by the CLS token and the patch tokens; the last layer is shared
    too (``shared_head=True``) or the patch tokens have their own
    (``patch_out_channels`` prototypes).

    Args:
        in_channels (int): backbone channels ``C``.
        out_channels (int): CLS prototypes ``K`` (iBOT: 8192).
        patch_out_channels (int, optional): patch prototypes ``K_p`` of the
            separate patch last layer; None (or ``shared_head``) means
            ``out_channels``. Defaults to None.
        shared_head (bool): one last layer for CLS and patches (the
            official ``--shared_head``). Defaults to True.
        num_layers (int): linear layers of the MLP, >= 1. Defaults to 3.
        hidden_channels (int): MLP width. Defaults to 2048.
        bottleneck_channels (int): MLP output, before the L2 normalisation.
            Defaults to 256.
        norm_last_layer (bool): keep the weight norm ``g`` of the last
            layer(s) fixed at 1. Defaults to True.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 patch_out_channels: Optional[int] = None,
                 shared_head: bool = True,
                 num_layers: int = 3,
                 hidden_channels: int = 2048,
                 bottleneck_channels: int = 256,
                 norm_last_layer: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + \
            [bottleneck_channels]
        layers = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # the official _init_weights
                nn.init.trunc_normal_(layer.weight, std=.02)
                nn.init.zeros_(layer.bias)
        self.shared_head = shared_head
        self.out_channels = out_channels
        self.patch_out_channels = out_channels if shared_head or \
            patch_out_channels is None else patch_out_channels
        self.last_layer = WeightNormLinear(bottleneck_channels, out_channels,
                                           fix_norm=norm_last_layer)
        self.last_layer2 = None if shared_head else WeightNormLinear(
            bottleneck_channels, self.patch_out_channels,
            fix_norm=norm_last_layer)

    def forward(
        self,
        x: torch.Tensor,
        freeze_last_layer: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Args:
            x: ``(B, 1+N, C)`` tokens, CLS first, or ``(B, C)`` CLS tokens
                only (the local views).
            freeze_last_layer: the last layer(s) get no gradient (the
                official first epoch).

        Returns:
            ``(B, K)`` CLS logits and ``(B, N, K_p)`` patch logits for
            tokens; ``(B, K)`` for CLS tokens alone.
        """
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        if x.dim() == 2:
            return self.last_layer(z, freeze_last_layer)
        patch_layer = self.last_layer2 or self.last_layer
        return (self.last_layer(z[:, 0], freeze_last_layer),
                patch_layer(z[:, 1:], freeze_last_layer))
