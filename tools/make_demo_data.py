"""Write the demo data set of :mod:`beit_plugin.datasets.demo_data`.

Usage::

    python tools/make_demo_data.py [--root data/demo] [--seed 0] [--force]

Does nothing when ``--root`` already holds a complete set made with the same
parameters, unless ``--force`` is given. Writes only into a missing or empty
folder or one this tool made (it carries a ``.complete`` marker); any other
folder is refused, and regenerating deletes only the files the tool wrote.

A held-out set, to evaluate demo models on more images than the 320 of
the demo's validation split (another seed draws other images)::

    python tools/make_demo_data.py --root data/demo_heldout --seed 1 \\
        --cls-val 4000
"""
import argparse
import inspect
import time
from pathlib import Path
from typing import Optional, Sequence

from beit_plugin.datasets.demo_data import make_demo_data

# the image counts make_demo_data takes, with their defaults
COUNTS = {
    name: parameter.default
    for name, parameter in inspect.signature(make_demo_data).parameters.items()
    if name in ('cls_train', 'cls_val', 'seg_train', 'seg_val')
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Write the synthetic shapes demo data set (ImageNet and '
        'ADE20K layouts).')
    parser.add_argument(
        '--root', default='data/demo', help='output folder (data/demo)')
    parser.add_argument(
        '--seed', type=int, default=0, help='random seed (0)')
    for name, default in COUNTS.items():
        task, split = name.split('_')
        task = 'classification' if task == 'cls' else 'segmentation'
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=default,
            help=f'number of {task} {split} images ({default})')
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if the folder holds a complete set')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Write the set the command line asks for; returns its root folder."""
    args = parse_args(argv)
    start = time.perf_counter()
    root = make_demo_data(
        args.root, seed=args.seed, force=args.force,
        **{name: getattr(args, name) for name in COUNTS})
    print(f'demo data ready in {root} '
          f'({time.perf_counter() - start:.1f} s)')
    return root


if __name__ == '__main__':
    main()
