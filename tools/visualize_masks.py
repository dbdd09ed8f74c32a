"""Save a PNG grid of a config's training images with their masks overlaid.

The config's ``train_dataloader.dataset`` is built with its pipeline cut
before the first packing transform (``PackInputs`` or any other ``Pack*``),
so each sample is still a dict holding the image (``img``; the first view
if the pipeline makes several) and the patch mask (``mask``, ``(h, w)``).
Masked patches are tinted red.

Example::

    python tools/visualize_masks.py configs/beit_v1.py --num 16 --out masks.png
"""
import argparse
import copy
import math
from typing import List, Optional, Sequence

import cv2
import numpy as np
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed

import beit_plugin  # noqa: F401  (registers our transforms)
from beit_plugin.registry import DATASETS

# BGR, as LoadImageFromFile gives and cv2.imwrite takes
TINT = np.array([0, 0, 255], np.float32)
BACKGROUND = 255


def _type_name(step: dict) -> str:
    kind = step['type']
    return (kind if isinstance(kind, str) else kind.__name__).split('.')[-1]


def _as_bgr_uint8(img) -> np.ndarray:
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


def overlay_mask(img, mask, alpha: float = 0.6) -> np.ndarray:
    """Tint the masked patches of an image.

    Args:
        img (np.ndarray): Image of shape ``(H, W)`` or ``(H, W, C)``, BGR.
        mask (np.ndarray | torch.Tensor): Patch mask of shape ``(h, w)``,
            nonzero where masked; it is stretched over the image.
        alpha (float): Weight of the tint in masked patches.
            Defaults to 0.6.

    Returns:
        np.ndarray: uint8 image of shape ``(H, W, 3)``.
    """
    img = _as_bgr_uint8(img)
    mask = np.asarray(mask).astype(np.uint8)
    pixels = cv2.resize(mask, (img.shape[1], img.shape[0]),
                        interpolation=cv2.INTER_NEAREST).astype(bool)
    out = img.astype(np.float32)
    out[pixels] = (1 - alpha) * out[pixels] + alpha * TINT
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


def masked_samples(cfg: Config, num: int) -> List[dict]:
    """Run the training pipeline, up to packing, on the first samples.

    Args:
        cfg (Config): Config with ``train_dataloader.dataset`` whose
            ``pipeline`` contains a mask generator.
        num (int): Samples to take (fewer if the dataset is smaller).

    Returns:
        list[dict]: Per sample, the pipeline's results before packing.
    """
    init_default_scope(cfg.get('default_scope', 'beit_plugin'))
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    pipeline = dataset_cfg.pop('pipeline')
    cut = next((index for index, step in enumerate(pipeline)
                if _type_name(step).startswith('Pack')), len(pipeline))
    dataset = DATASETS.build(dict(dataset_cfg, pipeline=pipeline[:cut]))
    samples = [dataset[index] for index in range(min(num, len(dataset)))]
    if samples and 'mask' not in samples[0]:
        raise ValueError('the pipeline of train_dataloader.dataset makes '
                         'no mask: add a BlockwiseMaskGenerator')
    return samples


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--num', type=int, default=16,
                        help='samples to show (default: 16)')
    parser.add_argument('--out', default='masks.png',
                        help='PNG to write (default: masks.png)')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed of the pipeline (default: 0)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Write the PNG grid; ``argv`` defaults to the command line."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    set_random_seed(args.seed)
    samples = masked_samples(cfg, args.num)
    if not samples:
        raise ValueError(f'{args.config}: the training dataset is empty')
    tiles = []
    for results in samples:
        img = results['img']
        if isinstance(img, (list, tuple)):
            img = img[0]
        tiles.append(overlay_mask(img, results['mask']))
    if not cv2.imwrite(args.out, make_grid(tiles)):
        raise OSError(f'could not write {args.out}')
    print(f'saved {len(tiles)} masked images to {args.out}')


if __name__ == '__main__':
    main()
