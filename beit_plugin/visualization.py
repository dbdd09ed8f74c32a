"""Drawing helpers shared by the picture tools (``tools/visualize_*.py``)
and :class:`~beit_plugin.engine.hooks.MIMVisualizationHook`.

Pictures are BGR uint8 arrays, as OpenCV reads and writes them; convert with
``img[..., ::-1]`` for MMEngine's visualizer, which takes RGB.
"""
import math
from typing import Sequence

import cv2
import numpy as np

#: BGR tint of masked patches (red)
TINT = np.array([0, 0, 255], np.float32)
#: grey level around and between tiles (white)
BACKGROUND = 255


def as_uint8_image(img) -> np.ndarray:
    """Return ``img`` (``(H, W)`` or ``(H, W, C)``) as ``(H, W, 3)`` uint8.

    Images that are not uint8 (e.g. normalized) are rescaled from their own
    min-max range to ``[0, 255]``.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        low, high = float(img.min()), float(img.max())
        img = ((img - low) * (255 / max(high - low, 1e-6))).round().astype(
            np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def overlay_mask(img, mask, alpha: float = 0.6,
                 tint: Sequence[float] = TINT) -> np.ndarray:
    """Tint the masked patches of an image.

    Args:
        img (np.ndarray): Image of shape ``(H, W)`` or ``(H, W, C)``, BGR.
        mask (np.ndarray | torch.Tensor): Patch mask of shape ``(h, w)``,
            nonzero where masked; it is stretched over the image.
        alpha (float): Weight of the tint in masked patches.
            Defaults to 0.6.
        tint (Sequence[float]): BGR colour of the tint. Defaults to
            :data:`TINT` (red).

    Returns:
        np.ndarray: uint8 image of shape ``(H, W, 3)``.
    """
    img = as_uint8_image(img)
    mask = np.asarray(mask).astype(np.uint8)
    pixels = cv2.resize(mask, (img.shape[1], img.shape[0]),
                        interpolation=cv2.INTER_NEAREST).astype(bool)
    out = img.astype(np.float32)
    out[pixels] = (1 - alpha) * out[pixels] + alpha * np.asarray(
        tint, np.float32)
    return out.round().astype(np.uint8)


def make_grid(tiles: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Tile images on a white background, ``ceil(sqrt(n))`` per row.

    Args:
        tiles (Sequence[np.ndarray]): ``n >= 1`` uint8 images of shape
            ``(H_i, W_i, 3)``; each cell is as large as the largest.
        pad (int): Pixels around and between cells. Defaults to 2.

    Returns:
        np.ndarray: uint8 image of shape ``(rows * (H + pad) + pad,
        cols * (W + pad) + pad, 3)``.
    """
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_h = max(tile.shape[0] for tile in tiles)
    cell_w = max(tile.shape[1] for tile in tiles)
    grid = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad,
                    3), BACKGROUND, np.uint8)
    for index, tile in enumerate(tiles):
        top = pad + (index // cols) * (cell_h + pad)
        left = pad + (index % cols) * (cell_w + pad)
        grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return grid


def token_colours(ids: np.ndarray) -> np.ndarray:
    """A fixed BGR colour per id: ``ids`` ``(...)`` -> ``(..., 3)`` uint8.

    The bytes of ``id * 2654435761 mod 2**24`` (an odd multiplier, so
    distinct ids below ``2**24`` get distinct colours), whatever the
    vocabulary size.
    """
    code = (ids.astype(np.int64) * 2654435761) % (1 << 24)
    return np.stack([(code >> shift) & 255 for shift in (0, 8, 16)],
                    axis=-1).astype(np.uint8)
