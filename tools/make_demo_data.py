"""Write the demo data set of :mod:`beit_plugin.datasets.demo_data`.

Usage::

    python tools/make_demo_data.py [--root data/demo] [--seed 0] [--force]

Does nothing when ``--root`` already holds a complete set made with the same
parameters, unless ``--force`` is given.
"""
import argparse
import time

from beit_plugin.datasets.demo_data import make_demo_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Write the synthetic shapes demo data set (ImageNet and '
        'ADE20K layouts).')
    parser.add_argument(
        '--root', default='data/demo', help='output folder (data/demo)')
    parser.add_argument(
        '--seed', type=int, default=0, help='random seed (0)')
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if the folder holds a complete set')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    root = make_demo_data(args.root, seed=args.seed, force=args.force)
    print(f'demo data ready in {root} '
          f'({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
    main()
