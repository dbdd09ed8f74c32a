"""One blockwise mask per global view, with iBOT's random mask ratio."""
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from beit_plugin.registry import TRANSFORMS
from .masking import BlockwiseMaskGenerator, _uniforms


@TRANSFORMS.register_module()
class MultiViewBlockwiseMaskGenerator(BlockwiseMaskGenerator):
    """Blockwise masks for the ``num_views`` global views of iBOT (after
    MMPretrain's ``MultiView`` transform), each drawn independently.

    **Added Keys**:

    - mask (np.ndarray): bool ``(num_views, H, W)``, True where a patch is
      masked; ``PackInputs`` puts it in the data sample's ``mask``.

    Per view, as the official ``ImageFolderMask`` with ``pred_ratio=[0,
    r]``, ``pred_ratio_var=[0, v]``: with probability ``1 - mask_prob`` the
    view is not masked at all; otherwise a ratio is drawn uniformly from
    ``mask_ratio`` and ``round(ratio * H * W)`` patches are masked with BEiT
    v1's blocks (:class:`BlockwiseMaskGenerator` with ``fixed_count=False``,
    no cap on a block's area besides the patches still to mask), so a mask
    may come out a little short, as there.

    Args:
        input_size (int | Sequence[int]): the patch grid of a global view.
        num_views (int): global views to mask. Defaults to 2.
        mask_ratio (tuple[float, float]): the range of a view's ratio
            (iBOT: 0.3 +- 0.2). Defaults to (0.1, 0.5).
        mask_prob (float): probability that a view is masked (iBOT: 0.5).
            Defaults to 0.5.
        min_num_patches (int, optional): smallest block area; None means
            the official ``(min(H, W) // 3) ** 2`` (16 for 14 x 14).
        min_aspect (float): as :class:`BlockwiseMaskGenerator`.
            Defaults to 0.3.
        max_aspect (float, optional): as :class:`BlockwiseMaskGenerator`.
    """

    def __init__(self,
                 input_size: Union[int, Sequence[int]],
                 num_views: int = 2,
                 mask_ratio: Tuple[float, float] = (0.1, 0.5),
                 mask_prob: float = 0.5,
                 min_num_patches: Optional[int] = None,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None) -> None:
        size = (input_size, ) * 2 if isinstance(input_size, int) else \
            tuple(input_size)
        if min_num_patches is None:
            min_num_patches = max(1, (min(size) // 3)**2)
        super().__init__(size, num_masking_patches=0,
                         min_num_patches=min_num_patches,
                         min_aspect=min_aspect, max_aspect=max_aspect)
        low, high = mask_ratio
        if not 0 <= low <= high <= 1:
            raise ValueError('mask_ratio must be (low, high) with 0 <= low '
                             f'<= high <= 1, but got {mask_ratio!r}')
        if not 0 <= mask_prob <= 1:
            raise ValueError(f'mask_prob must be in [0, 1], got {mask_prob}')
        if num_views < 1:
            raise ValueError(f'num_views must be >= 1, got {num_views}')
        self.num_views = num_views
        self.mask_ratio_range = (float(low), float(high))
        self.mask_prob = float(mask_prob)

    def _one_mask(self) -> np.ndarray:
        """A ``(H * W, )`` bool mask from NumPy's global generator."""
        if np.random.random() >= self.mask_prob:
            return np.zeros(self.num_patches, bool)
        ratio = np.random.uniform(*self.mask_ratio_range)
        count = round(ratio * self.num_patches)
        self.num_masking_patches = self.max_num_patches = count
        bits, _ = self._blockwise_bits(_uniforms())
        return self._to_array(bits)

    def transform(self, results: dict) -> dict:
        """Add ``mask`` ``(num_views, H, W)`` to ``results``."""
        results['mask'] = np.stack([
            self._one_mask() for _ in range(self.num_views)
        ]).reshape(self.num_views, self.height, self.width)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(input_size='
                f'{(self.height, self.width)}, num_views={self.num_views}, '
                f'mask_ratio={self.mask_ratio_range}, '
                f'mask_prob={self.mask_prob}, '
                f'min_num_patches={self.min_num_patches}, '
                f'min_aspect={self.min_aspect}, '
                f'max_aspect={self.max_aspect})')
