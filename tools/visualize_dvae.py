"""Save a PNG of a discrete VAE's inputs (top row) and reconstructions from
their token ids (bottom row).

The images are the first ``--num`` samples of the config's
``train_dataloader.dataset`` through its own pipeline (seeded, so the random
crops repeat), normalised by the model's data preprocessor; the
reconstruction is :meth:`DiscreteVAE.reconstruct` (hard argmax tokens).

Example::

    python tools/visualize_dvae.py configs/dvae/dvae_demo.py \\
        work_dirs/dvae_demo/iter_2000.pth --num 8 --out recon.png
"""
import argparse
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint, set_random_seed

import beit_plugin  # noqa: F401  (registers our models)
from beit_plugin.registry import DATASETS, MODELS

PAD = 2  # px of white between tiles


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Inputs vs reconstructions of a discrete VAE')
    parser.add_argument('config', help='config of the DiscreteVAE')
    parser.add_argument('checkpoint', help='checkpoint to load')
    parser.add_argument('--out', default='recon.png', help='PNG to write')
    parser.add_argument('--num', type=int, default=8, help='images')
    parser.add_argument('--seed', type=int, default=0, help='pipeline seed')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, as key=value pairs')
    return parser.parse_args(argv)


def to_bgr_uint8(img: torch.Tensor, norm: dict) -> np.ndarray:
    """``(3, H, W)`` RGB image normalised with ``norm`` -> ``(H, W, 3)``
    BGR uint8."""
    mean = torch.tensor(norm['mean']).view(3, 1, 1)
    std = torch.tensor(norm['std']).view(3, 1, 1)
    pixels = (img.float().cpu() * std + mean).clamp(0, 255).round()
    return pixels.byte().permute(1, 2, 0).numpy()[..., ::-1]


def grid(rows: List[List[np.ndarray]]) -> np.ndarray:
    """Tile equal-size ``(H, W, 3)`` images, one list a row."""
    height, width = rows[0][0].shape[:2]
    canvas = np.full((len(rows) * (height + PAD) + PAD,
                      len(rows[0]) * (width + PAD) + PAD, 3),
                     255,
                     dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = PAD + r * (height + PAD), PAD + c * (width + PAD)
            canvas[top:top + height, left:left + width] = tile
    return canvas


def main(argv: Optional[Sequence[str]] = None) -> np.ndarray:
    """Write the PNG; return it as an ``(H, W, 3)`` BGR array."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'beit_plugin'))
    set_random_seed(args.seed)

    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    samples = [dataset[i] for i in range(min(args.num, len(dataset)))]
    data = model.data_preprocessor(pseudo_collate(samples), False)
    recon = model.reconstruct(data['inputs'])

    norm = model.input_norm
    image = grid([[to_bgr_uint8(x, norm) for x in data['inputs']],
                  [to_bgr_uint8(x, norm) for x in recon]])
    if not cv2.imwrite(args.out, image):
        raise OSError(f'could not write {args.out}')
    print(f'saved {len(samples)} inputs and reconstructions to {args.out}')
    return image


if __name__ == '__main__':
    main()
