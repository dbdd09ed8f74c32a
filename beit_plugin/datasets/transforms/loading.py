"""Image and segmentation-map loading whose failures name the file.

MMCV's ``LoadImageFromFile`` names a file it cannot decode, but an empty
file fails inside OpenCV (``!buf.empty()``) without its name, and
MMSegmentation's ``LoadAnnotations`` names no file at all (PIL's ``cannot
identify image file <_io.BytesIO ...>``). With thousands of images of one's
own, the name is what one needs. The segmentation loader also checks what
would otherwise fail later without a name (colour maps, sizes, indices).
"""
import os
from typing import Optional

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations

from beit_plugin.registry import TRANSFORMS

SHOWN_VALUES = 5  # out-of-range values quoted in the error


def _unreadable(kind: str, path: str, error: Exception) -> OSError:
    """The error for a file that could not be loaded, with its size (an
    empty file is the usual cause) when it is a local file."""
    size = f' ({os.path.getsize(path)} bytes)' if os.path.isfile(path) else ''
    return OSError(f'cannot load the {kind} {path}{size}: '
                   f'{type(error).__name__}: {error}')


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """MMCV's ``LoadImageFromFile`` (same arguments and outputs: ``img``
    ``(H, W, 3)`` uint8 BGR, ``img_shape``, ``ori_shape``), except that a
    file it cannot read or decode raises an ``OSError`` naming the file."""

    def transform(self, results: dict) -> dict:
        try:
            return super().transform(results)
        except Exception as error:
            raise _unreadable('image', results['img_path'], error) from error


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """MMSegmentation's ``LoadAnnotations`` (``gt_seg_map`` ``(H, W)`` uint8
    class indices, 255 ignored), except that a segmentation map it cannot
    decode, one with colour channels (the class of each pixel must be its
    value, as in ADE20K's PNGs), one whose size is not its image's, or, given
    ``num_classes``, one with a class index past the class list raises an
    error naming the file.

    Args:
        num_classes (int, optional): length of the data set's class list;
            None skips the index check.
        ignore_index (int): the index that marks pixels without a class.
            Defaults to 255.
        **kwargs: MMSegmentation's ``LoadAnnotations`` arguments
            (``reduce_zero_label``, ``imdecode_backend``...).
    """

    def __init__(self,
                 num_classes: Optional[int] = None,
                 ignore_index: int = 255,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _load_seg_map(self, results: dict) -> None:
        path = results['seg_map_path']
        try:
            super()._load_seg_map(results)
        except Exception as error:
            raise _unreadable('segmentation map', path, error) from error
        seg = results['gt_seg_map']
        if seg.ndim != 2:
            raise ValueError(
                f'the segmentation map {path} has shape {seg.shape}: it '
                'must be one channel of class indices (a grayscale or '
                'palette PNG), not a colour image')
        image_shape = results.get('ori_shape')
        if image_shape is not None and seg.shape != tuple(image_shape[:2]):
            raise ValueError(
                f'the segmentation map {path} is {seg.shape[0]} x '
                f'{seg.shape[1]} px but its image {results.get("img_path")} '
                f'is {image_shape[0]} x {image_shape[1]} px')
        if self.num_classes is not None:
            self._check_indices(path, seg, results['reduce_zero_label'])

    def _check_indices(self, path: str, seg: np.ndarray,
                       reduce_zero_label: bool) -> None:
        """Refuse class indices ``>= num_classes`` in ``seg`` ``(H, W)``,
        naming them as the file stores them."""
        found = np.unique(seg)
        extra = found[(found != self.ignore_index)
                      & (found >= self.num_classes)]
        if not extra.size:
            return
        shift = int(reduce_zero_label)
        stored = ', '.join(str(int(v) + shift) for v in extra[:SHOWN_VALUES])
        valid = f'{shift}-{self.num_classes - 1 + shift}'
        raise ValueError(
            f'the segmentation map {path} holds the values {stored}, past '
            f'the {self.num_classes} classes of the config (values {valid}'
            + (', 0 = not labelled' if shift else '') + '): add the missing '
            'classes to the class list')
