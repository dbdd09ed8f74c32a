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
from typing import List, Optional, Sequence

import cv2
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed

import beit_plugin  # noqa: F401  (registers our transforms)
from beit_plugin.registry import DATASETS
# the drawing helpers (BACKGROUND: the grid's white; TINT: the masked
# patches' BGR red), shared with MIMVisualizationHook
from beit_plugin.visualization import (BACKGROUND, TINT,  # noqa: F401
                                       make_grid, overlay_mask)


def _type_name(step: dict) -> str:
    kind = step['type']
    return (kind if isinstance(kind, str) else kind.__name__).split('.')[-1]


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
