"""Masks per second of BEiT blockwise mask generators, in one run.

Times ``BlockwiseMaskGenerator`` (``fixed_count`` False and True),
MMPretrain's ``BEiTMaskGenerator`` and a plain copy of the reference loop
(BEiT's ``MaskingGenerator``, kept here and not in the package) with the
same settings, and prints each rate and ours over the others. Run it
with ``OMP_NUM_THREADS=1`` on an otherwise idle core.

The copy is also the reference that tests/test_masking.py compares
``BlockwiseMaskGenerator``'s masks with, hence its ``fixed_count`` option
(BEiT v2's top-up), which the benchmark leaves off.

Example::

    python tools/benchmark_masking.py --num 20000
"""
import argparse
import math
import random
import time
from typing import Callable, Optional, Tuple

import numpy as np


class ReferenceMaskingGenerator:
    """BEiT's reference ``MaskingGenerator``, per-patch loop and all.

    ``fixed_count=True`` adds the top-up of BEiT v2's ``masking_generator``:
    when the blocks fall short of ``num_masking_patches``, patches drawn
    uniformly among the unmasked ones make up the count.

    Args:
        input_size (int | tuple[int, int]): Patch grid size.
        num_masking_patches (int): Patches to mask.
        min_num_patches (int): Smallest block area. Defaults to 4.
        max_num_patches (int, optional): Largest block; None means
            ``num_masking_patches``. Defaults to None.
        min_aspect (float): Smallest aspect ratio. Defaults to 0.3.
        max_aspect (float, optional): Largest aspect ratio; None means
            ``1 / min_aspect``. Defaults to None.
        fixed_count (bool): Top the mask up to exactly
            ``num_masking_patches`` (BEiT v2). Defaults to False.
    """

    def __init__(self,
                 input_size,
                 num_masking_patches: int,
                 min_num_patches: int = 4,
                 max_num_patches: Optional[int] = None,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None,
                 fixed_count: bool = False) -> None:
        if not isinstance(input_size, tuple):
            input_size = (input_size, ) * 2
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = (num_masking_patches if max_num_patches is None
                                else max_num_patches)
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.fixed_count = fixed_count

    def _mask(self, mask: np.ndarray, max_mask_patches: int) -> int:
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches,
                                         max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top:top + h, left:left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        return delta

    def __call__(self) -> np.ndarray:
        """A mask of the patch grid, ``(height, width)`` ints, 1 masked."""
        mask = np.zeros((self.height, self.width), dtype=int)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = min(self.num_masking_patches - mask_count,
                                   self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        if self.fixed_count and mask_count < self.num_masking_patches:
            rows, cols = (mask == 0).nonzero()
            chosen = random.sample(range(len(rows)),
                                   self.num_masking_patches - mask_count)
            mask[rows[chosen], cols[chosen]] = 1
        return mask


def masks_per_second(make: Callable[[], object], num: int,
                     repeat: int) -> float:
    """Best rate of ``repeat`` runs of ``num`` calls of ``make``.

    Args:
        make (Callable[[], object]): Makes one mask.
        num (int): Calls per run.
        repeat (int): Runs; the fastest counts, to damp noise from other
            processes.

    Returns:
        float: Masks per second.
    """
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(num):
            make()
        best = min(best, time.perf_counter() - start)
    return num / best


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num', type=int, default=20000,
                        help='masks per timed run (default: 20000)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='timed runs per generator; the best counts '
                        '(default: 3)')
    parser.add_argument('--input-size', type=int, default=14,
                        help='side of the square patch grid (default: 14)')
    parser.add_argument('--num-masking-patches', type=int, default=75,
                        help='patches to mask (default: 75)')
    parser.add_argument('--min-num-patches', type=int, default=16,
                        help='smallest block area (default: 16)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of numpy and random (default: 0)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from mmpretrain.datasets.transforms import BEiTMaskGenerator

    from beit_plugin.datasets.transforms import BlockwiseMaskGenerator

    settings = dict(input_size=args.input_size,
                    num_masking_patches=args.num_masking_patches,
                    min_num_patches=args.min_num_patches)
    ours_v1 = BlockwiseMaskGenerator(**settings)
    ours_v2 = BlockwiseMaskGenerator(**settings, fixed_count=True)
    mmpretrain = BEiTMaskGenerator(**settings)
    reference = ReferenceMaskingGenerator(**settings)
    candidates: Tuple[Tuple[str, Callable[[], object]], ...] = (
        ('ours (fixed_count=False)', lambda: ours_v1({})),
        ('ours (fixed_count=True)', lambda: ours_v2({})),
        ('mmpretrain BEiTMaskGenerator', lambda: mmpretrain({})),
        ('reference loop', reference),
    )

    np.random.seed(args.seed)
    random.seed(args.seed)
    rates = {
        name: masks_per_second(make, args.num, args.repeat)
        for name, make in candidates
    }
    print(f'{args.num_masking_patches} of {args.input_size}x'
          f'{args.input_size} patches, min_num_patches='
          f'{args.min_num_patches}, best of {args.repeat} x {args.num} '
          'masks')
    print(f'{"generator":<30}{"masks/s":>10}')
    for name, rate in rates.items():
        print(f'{name:<30}{rate:>10.0f}')
    reference_rate = rates['reference loop']
    mmpretrain_rate = rates['mmpretrain BEiTMaskGenerator']
    for ours in ('ours (fixed_count=False)', 'ours (fixed_count=True)'):
        print(f'{ours}: {rates[ours] / reference_rate:.2f}x the reference '
              f'loop, {rates[ours] / mmpretrain_rate:.2f}x mmpretrain')


if __name__ == '__main__':
    main()
