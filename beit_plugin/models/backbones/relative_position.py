"""Relative position bias of BEiT: index, lookup and resizing of the tables.

A table for a ``(Wh, Ww)`` window holds ``(2*Wh-1)*(2*Ww-1) + 3`` rows of
``num_heads`` values: one per 2-D offset between two patches, then the three
special entries cls->token, token->cls and cls->cls, in that order (the layout
of the official BEiT code, timm and transformers).
"""
from functools import lru_cache
from typing import List, Tuple

import torch
from torch import nn

Window = Tuple[int, int]


def num_relative_distances(window: Window) -> int:
    """Rows of a relative position bias table for ``window`` (3 extra)."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + 3


@lru_cache(maxsize=16)
def relative_position_index(window: Window,
                            device: torch.device = torch.device('cpu')
                            ) -> torch.Tensor:
    """Row of the table for each (query, key) pair, shape ``(1+N, 1+N)``,
    cached per window and device (no copy per layer and step).

    ``N = Wh * Ww``; position 0 is the CLS token.
    """
    wh, ww = window
    coords = torch.stack(
        torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij'))
    coords = coords.flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    num = num_relative_distances(window)
    index = torch.zeros((wh * ww + 1, ) * 2, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num - 3
    index[0:, 0] = num - 2
    index[0, 0] = num - 1
    return index.to(device)


def lookup_bias(table: torch.Tensor, window: Window,
                table_window: Window) -> torch.Tensor:
    """Gather the attention bias for ``window`` from ``table``.

    Args:
        table: ``(num_relative_distances(table_window), num_heads)``.
        window: patch grid ``(Wh, Ww)`` of the input; the table is resized
            to it when it differs from ``table_window``.
        table_window: patch grid the table was built for.

    Returns:
        ``(num_heads, 1+N, 1+N)`` bias to add to the attention logits.
    """
    if tuple(window) != tuple(table_window):
        table = resize_relative_position_table(table, window, table_window)
    index = relative_position_index(tuple(window), table.device)
    length = index.shape[0]
    bias = table[index.view(-1)].view(length, length, -1)
    return bias.permute(2, 0, 1).contiguous()


class RelativePositionBias(nn.Module):
    """A relative position bias table shared by all blocks.

    Args:
        window (tuple[int, int]): patch grid ``(Wh, Ww)`` the table is built
            for.
        num_heads (int): attention heads.
    """

    def __init__(self, window: Window, num_heads: int) -> None:
        super().__init__()
        self.window = tuple(window)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_relative_distances(self.window), num_heads))

    def forward(self, window: Window) -> torch.Tensor:
        """Bias ``(num_heads, 1+N, 1+N)`` for a ``window`` patch grid."""
        return lookup_bias(self.relative_position_bias_table, window,
                           self.window)


def _geometric_offsets(src: int, dst: int) -> List[float]:
    """Source sample positions of the official BEiT resize, for one axis.

    The ``src`` table entries (offsets ``-(src//2) .. src//2``) are spread over
    ``dst//2`` with gaps growing geometrically (ratio found by bisection, as in
    the official ``run_class_finetuning.py``), so offsets 0 and +-1 stay where
    they are and far offsets are stretched.
    """
    def progression(ratio: float, n: int) -> float:
        return (1.0 - ratio**n) / (1.0 - ratio)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        ratio = (left + right) / 2.0
        if progression(ratio, src // 2) > dst // 2:
            right = ratio
        else:
            left = ratio
    offsets, cur = [], 1.0
    for i in range(src // 2):
        offsets.append(cur)
        cur += ratio**(i + 1)
    return [-d for d in reversed(offsets)] + [0.0] + offsets


def _spline_matrix(knots: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear map from values at ``knots`` to a cubic spline's values at
    ``points``, shape ``(len(points), len(knots))``, in float64.

    The spline interpolates, with not-a-knot end conditions: the spline that
    scipy's ``interp2d(kind='cubic')`` (FITPACK ``regrid``, s=0) fits on each
    axis of a rectilinear grid; like FITPACK's evaluation, points outside the
    knots take the value at the nearest end. Fewer than 4 knots: linear.
    """
    n = knots.numel()
    points = points.clamp(knots[0], knots[-1])
    eye = torch.eye(n, dtype=torch.float64)
    seg = torch.searchsorted(knots, points, right=True).sub(1).clamp(0, n - 2)
    x0, x1 = knots[seg], knots[seg + 1]
    h = x1 - x0
    a, b = (x1 - points) / h, (points - x0) / h
    values = a[:, None] * eye[seg] + b[:, None] * eye[seg + 1]
    if n < 4:
        return values
    # second derivatives m = S @ y from the tridiagonal system plus the
    # not-a-knot rows (third derivative continuous at knots 1 and n-2)
    hs = knots[1:] - knots[:-1]
    lhs = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, n, dtype=torch.float64)
    for i in range(1, n - 1):
        lhs[i, i - 1:i + 2] = torch.stack(
            [hs[i - 1], 2 * (hs[i - 1] + hs[i]), hs[i]])
        rhs[i] = 6 * ((eye[i + 1] - eye[i]) / hs[i] -
                      (eye[i] - eye[i - 1]) / hs[i - 1])
    lhs[0, :3] = torch.stack([hs[1], -(hs[0] + hs[1]), hs[0]])
    lhs[-1, -3:] = torch.stack([hs[-1], -(hs[-2] + hs[-1]), hs[-2]])
    second = torch.linalg.solve(lhs, rhs)
    curve_a = (a**3 - a) * h**2 / 6
    curve_b = (b**3 - b) * h**2 / 6
    return values + curve_a[:, None] * second[seg] + \
        curve_b[:, None] * second[seg + 1]


@lru_cache(maxsize=32)
def _axis_matrix(src: int, dst: int,
                 device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """``(dst, src)`` resize operator for one axis of a table (float64),
    built once on the host and cached per device: a model run at another
    resolution than its tables' resizes them in every forward."""
    if device.type != 'cpu':
        return _axis_matrix(src, dst).to(device)
    if src == dst:
        return torch.eye(src, dtype=torch.float64)
    knots = torch.tensor(_geometric_offsets(src, dst), dtype=torch.float64)
    half = dst // 2
    points = torch.arange(-half, half + 1, dtype=torch.float64)
    return _spline_matrix(knots, points)


def infer_window(num_rows: int) -> Window:
    """Square window whose table has ``num_rows`` rows (3 extra included)."""
    side = round((num_rows - 3)**0.5)
    if side * side != num_rows - 3 or side % 2 == 0:
        raise ValueError(
            f'a relative position bias table of {num_rows} rows is not the '
            'table of a square window ((2W-1)**2 + 3 rows)')
    return ((side + 1) // 2, ) * 2


def resize_relative_position_table(table: torch.Tensor,
                                   window: Window,
                                   src_window: Window = None) -> torch.Tensor:
    """Resize a relative position bias table to another window, in torch.

    Reproduces the official BEiT resize (geometric source grid, bicubic
    spline; scipy ``interp2d``, which it used, is gone from scipy >= 1.14).
    Offsets 0 and +-1 and the three CLS entries keep their values.

    Args:
        table: ``(rows, num_heads)`` table of ``src_window``.
        window: target patch grid ``(Wh, Ww)``.
        src_window: grid of ``table``; inferred (square) when omitted.

    Returns:
        ``(num_relative_distances(window), num_heads)`` table.
    """
    src_window = tuple(src_window or infer_window(table.shape[0]))
    if num_relative_distances(src_window) != table.shape[0]:
        raise ValueError(
            f'relative position bias table has {table.shape[0]} rows, '
            f'expected {num_relative_distances(src_window)} for window '
            f'{src_window}')
    src = (2 * src_window[0] - 1, 2 * src_window[1] - 1)
    dst = (2 * window[0] - 1, 2 * window[1] - 1)
    if src == dst:
        return table
    grid, extra = table[:-3], table[-3:]
    heads = table.shape[1]
    grid = grid.double().T.reshape(heads, src[0], src[1])
    rows = _axis_matrix(src[0], dst[0], table.device)
    cols = _axis_matrix(src[1], dst[1], table.device)
    grid = rows @ grid @ cols.T  # (heads, dst_h, dst_w)
    grid = grid.reshape(heads, -1).T.to(table.dtype)
    return torch.cat([grid, extra], dim=0)
