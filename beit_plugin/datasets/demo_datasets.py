"""Datasets over the embedded demo data, generated on first use.

They are MMPretrain's / MMSegmentation's own dataset classes; the only
addition is that the data folder is made (by rank 0, once) when missing, so a
demo config runs on a fresh checkout with no data step.
"""
from pathlib import Path

from mmengine.dist import barrier, get_dist_info
from mmpretrain.datasets import ImageNet

from beit_plugin.registry import DATASETS
from .demo_data import ensure_demo_data


def ensure_demo_root(data_root: str) -> None:
    """Generate the demo set holding ``data_root`` (its parent folder)."""
    rank, world_size = get_dist_info()
    if rank == 0:
        ensure_demo_data(Path(data_root).parent)
    if world_size > 1:
        barrier()


@DATASETS.register_module()
class DemoImageNet(ImageNet):
    """MMPretrain's ``ImageNet`` over ``<demo root>/imagenet``.

    Args:
        data_root (str): the demo set's ImageNet folder. Defaults to
            ``'data/demo/imagenet'``.
        **kwargs: as :class:`mmpretrain.datasets.ImageNet` (``split``,
            ``pipeline`` ...); ``classes`` defaults to ``meta/classes.txt``.
    """

    def __init__(self, data_root: str = 'data/demo/imagenet',
                 **kwargs) -> None:
        ensure_demo_root(data_root)
        kwargs.setdefault('classes', str(Path(data_root) / 'meta' /
                                         'classes.txt'))
        super().__init__(data_root=data_root, **kwargs)
