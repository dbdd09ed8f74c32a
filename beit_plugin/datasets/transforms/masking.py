"""Blockwise (and plain random) patch masking for masked image modeling."""
import math
from numbers import Integral, Real
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform

from beit_plugin.registry import TRANSFORMS

# Uniforms drawn from the global RNG at a time: one attempt to place a block
# uses 4, and a 75-of-196 BEiT mask takes about 11 attempts on average.
_CHUNK = 64


def _uniforms() -> Iterator[float]:
    """Yield ``U[0, 1)`` floats from NumPy's global RNG, a chunk at a time.

    Drawing from :mod:`numpy.random` (rather than from a generator the
    transform owns) is what makes the masks follow MMEngine's seeding:
    ``set_random_seed`` and the data loader's ``worker_init_fn`` both seed it.
    Chunks are only drawn while a mask is made, and nothing is kept between
    masks, so each mask is a function of the global RNG state at call time.
    """
    while True:
        yield from np.random.random(_CHUNK).tolist()


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """Return ``value`` as an int if it lies in ``[low, high]``.

    Raises:
        ValueError: naming ``name`` and ``value`` otherwise.
    """
    if (isinstance(value, bool) or not isinstance(value, Integral)
            or value < low or (high is not None and value > high)):
        bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
        raise ValueError(f'{name} must be an integer {bounds}, '
                         f'but got {value!r}')
    return int(value)


def _check_positive(name: str, value) -> float:
    """Return ``value`` as a float if it is a positive finite number.

    Raises:
        ValueError: naming ``name`` and ``value`` otherwise.
    """
    if (isinstance(value, bool) or not isinstance(value, Real)
            or not 0 < value < math.inf):
        raise ValueError(f'{name} must be a positive number, '
                         f'but got {value!r}')
    return float(value)


@TRANSFORMS.register_module()
class BlockwiseMaskGenerator(BaseTransform):
    """Generate a BEiT blockwise mask over the patch grid.

    **Added Keys**:

    - mask (np.ndarray): bool array of shape ``(H, W)``, True where a patch
      is masked. ``PackInputs`` puts it in the data sample's ``mask`` field
      as a tensor.

    The blockwise mode follows BEiT (`unilm/beit masking_generator.py`):
    rectangles are added until ``num_masking_patches`` patches are masked.
    Each rectangle draws an area uniformly from ``[min_num_patches, m]``,
    where ``m = min(patches still to mask, max_num_patches)``, and an aspect
    ratio (height / width) log-uniformly from ``[min_aspect, max_aspect]``;
    its height and width are ``round(sqrt(area * aspect))`` and
    ``round(sqrt(area / aspect))``, both must be strictly smaller than the
    grid's, and its top-left corner is uniform over the positions where it
    fits. It is kept if it masks between 1 and ``m`` new patches; after 10
    rejected draws in a row the mask is returned as it is, so with
    ``fixed_count=False`` (BEiT v1) it may mask fewer patches than asked.
    ``fixed_count=True`` (BEiT v2) then masks randomly chosen unmasked
    patches until the count is exact.

    The random mode masks ``num_masking_patches`` patches chosen uniformly
    without replacement (the "random masking" ablation of BEiT).

    Randomness comes from NumPy's global RNG, which MMEngine seeds
    (``randomness=dict(seed=...)`` and one seed per data loader worker), so
    runs with the same seed give the same masks.

    Args:
        input_size (int | Sequence[int]): Size of the patch grid, ``S`` for
            ``S x S`` or ``(H, W)``; e.g. 14 for a 224 px image with 16 px
            patches. Each side must be positive.
        num_masking_patches (int, optional): Number of patches to mask, in
            ``[0, H * W]`` (BEiT: 75 of 196). Give exactly one of it and
            ``mask_ratio``. Defaults to None.
        min_num_patches (int): Smallest area drawn for one block, >= 1
            (BEiT v1 and v2 use 16). Defaults to 4.
        max_num_patches (int, optional): Largest number of patches one block
            may add, >= 1; None means ``num_masking_patches``.
            Defaults to None.
        min_aspect (float): Smallest block aspect ratio (height / width),
            > 0. Defaults to 0.3.
        max_aspect (float, optional): Largest block aspect ratio, > 0 and
            >= ``min_aspect``; None means ``1 / min_aspect``.
            Defaults to None.
        mask_ratio (float, optional): Fraction of the grid to mask, in
            ``[0, 1]``; the count is ``round(mask_ratio * H * W)``.
            Defaults to None.
        fixed_count (bool): Whether to top a blockwise mask up with random
            patches so that exactly ``num_masking_patches`` are masked (BEiT
            v2) instead of keeping the shortfall (BEiT v1). The random mode
            is always exact. Defaults to False.
        mask_mode (str): ``'blockwise'`` or ``'random'``.
            Defaults to ``'blockwise'``.

    Raises:
        ValueError: At construction, naming the argument and its value, if
            a size or count is out of range, an aspect ratio is not positive
            or ``min_aspect > max_aspect``.
    """

    def __init__(self,
                 input_size: Union[int, Sequence[int]],
                 num_masking_patches: Optional[int] = None,
                 min_num_patches: int = 4,
                 max_num_patches: Optional[int] = None,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None,
                 mask_ratio: Optional[float] = None,
                 fixed_count: bool = False,
                 mask_mode: str = 'blockwise') -> None:
        if isinstance(input_size, Sequence) and len(input_size) == 2:
            height, width = input_size
        elif isinstance(input_size, Sequence):
            raise ValueError('input_size must be an int or a pair (H, W), '
                             f'but got {input_size!r}')
        else:
            height = width = input_size
        self.height = _check_int('input_size', height, 1)
        self.width = _check_int('input_size', width, 1)
        self.num_patches = self.height * self.width

        if (num_masking_patches is None) == (mask_ratio is None):
            raise ValueError('give exactly one of num_masking_patches and '
                             f'mask_ratio, but got num_masking_patches='
                             f'{num_masking_patches!r}, mask_ratio='
                             f'{mask_ratio!r}')
        if mask_ratio is not None:
            if (isinstance(mask_ratio, bool)
                    or not isinstance(mask_ratio, Real)
                    or not 0 <= mask_ratio <= 1):
                raise ValueError('mask_ratio must be a number in [0, 1], '
                                 f'but got {mask_ratio!r}')
            num_masking_patches = round(mask_ratio * self.num_patches)
        self.mask_ratio = mask_ratio
        self.num_masking_patches = _check_int('num_masking_patches',
                                              num_masking_patches, 0,
                                              self.num_patches)

        self.min_num_patches = _check_int('min_num_patches', min_num_patches,
                                          1)
        self.max_num_patches = (
            self.num_masking_patches if max_num_patches is None else
            _check_int('max_num_patches', max_num_patches, 1))
        self.min_aspect = _check_positive('min_aspect', min_aspect)
        self.max_aspect = (1 / self.min_aspect if max_aspect is None else
                           _check_positive('max_aspect', max_aspect))
        if self.min_aspect > self.max_aspect:
            raise ValueError(
                f'min_aspect must not exceed max_aspect, but got min_aspect='
                f'{self.min_aspect!r} > max_aspect={self.max_aspect!r}')
        self.log_aspect_ratio = (math.log(self.min_aspect),
                                 math.log(self.max_aspect))

        if not isinstance(fixed_count, bool):
            raise ValueError(
                f'fixed_count must be a bool, but got {fixed_count!r}')
        self.fixed_count = fixed_count
        if mask_mode not in ('blockwise', 'random'):
            raise ValueError("mask_mode must be 'blockwise' or 'random', "
                             f'but got {mask_mode!r}')
        self.mask_mode = mask_mode

        # The mask is built as a Python int with bit ``r * W + c`` standing
        # for patch (r, c): a block is then one shifted constant, and both
        # the overlap count and the fill are single integer operations.
        # ``_blocks[h][w]`` is the h x w block at the top-left corner, for
        # the sizes the strict ``h < H and w < W`` test lets through.
        row_bits = [(1 << w) - 1 for w in range(self.width)]
        self._blocks = [[
            sum(bits << (i * self.width) for i in range(h))
            for bits in row_bits
        ] for h in range(self.height)]

    def _blockwise_bits(self, uniform: Iterator[float]) -> Tuple[int, int]:
        """Place BEiT blocks on an empty grid.

        Args:
            uniform (Iterator[float]): Source of ``U[0, 1)`` floats.

        Returns:
            tuple[int, int]: The mask as an int whose bit ``r * W + c`` is
            patch (r, c), and the number of masked patches.
        """
        height, width, blocks = self.height, self.width, self._blocks
        low = self.min_num_patches
        log_low = self.log_aspect_ratio[0]
        log_span = self.log_aspect_ratio[1] - log_low
        draw = uniform.__next__
        exp, sqrt = math.exp, math.sqrt

        mask = count = 0
        while count < self.num_masking_patches:
            max_mask_patches = min(self.num_masking_patches - count,
                                   self.max_num_patches)
            for _ in range(10):
                area = low + (max_mask_patches - low) * draw()
                aspect = exp(log_low + log_span * draw())
                h = round(sqrt(area * aspect))
                w = round(sqrt(area / aspect))
                top, left = draw(), draw()
                if h < height and w < width:
                    block = blocks[h][w] << (
                        int(top * (height - h + 1)) * width +
                        int(left * (width - w + 1)))
                    new = (block & ~mask).bit_count()
                    if 0 < new <= max_mask_patches:
                        mask |= block
                        count += new
                        break
            else:
                break
        return mask, count

    def _to_array(self, bits: int) -> np.ndarray:
        """Unpack an int mask (bit ``r * W + c`` = patch (r, c)).

        Args:
            bits (int): The mask as built by :meth:`_blockwise_bits`.

        Returns:
            np.ndarray: Flat bool array of shape ``(H * W, )``.
        """
        packed = np.frombuffer(
            bits.to_bytes((self.num_patches + 7) // 8, 'little'), np.uint8)
        return np.unpackbits(
            packed, count=self.num_patches, bitorder='little').view(bool)

    def transform(self, results: dict) -> dict:
        """Add a new mask to ``results``.

        Args:
            results (dict): Result dict from the previous transform.

        Returns:
            dict: ``results`` with ``mask``, a bool array of shape ``(H, W)``.
        """
        if self.mask_mode == 'random':
            mask = np.zeros(self.num_patches, bool)
            mask[np.random.permutation(
                self.num_patches)[:self.num_masking_patches]] = True
        else:
            bits, count = self._blockwise_bits(_uniforms())
            mask = self._to_array(bits)
            missing = self.num_masking_patches - count
            # A kept block adds at most the patches still to mask, so the
            # count never exceeds num_masking_patches: only a top-up is due.
            if self.fixed_count and missing > 0:
                unmasked = np.flatnonzero(~mask)
                mask[np.random.permutation(unmasked)[:missing]] = True
        results['mask'] = mask.reshape(self.height, self.width)
        return results

    def __repr__(self) -> str:
        repr_str = self.__class__.__name__
        repr_str += f'(input_size={(self.height, self.width)}, '
        repr_str += f'num_masking_patches={self.num_masking_patches}, '
        repr_str += f'min_num_patches={self.min_num_patches}, '
        repr_str += f'max_num_patches={self.max_num_patches}, '
        repr_str += f'min_aspect={self.min_aspect}, '
        repr_str += f'max_aspect={self.max_aspect}, '
        repr_str += f'mask_ratio={self.mask_ratio}, '
        repr_str += f'fixed_count={self.fixed_count}, '
        repr_str += f"mask_mode='{self.mask_mode}')"
        return repr_str
