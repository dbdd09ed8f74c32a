"""Datasets over the embedded demo data, generated on first use.

They are MMPretrain's / MMSegmentation's own dataset classes; the only
addition is that the data folder is made (by rank 0, once) when missing, so a
demo config runs on a fresh checkout with no data step. Both are registered in
the ``beit_plugin`` scope, so a config of any scope reaches them with the
prefix: ``type='beit_plugin.DemoADE20K'`` from an MMSegmentation config
(``default_scope='mmseg'``).
"""
from pathlib import Path

from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmpretrain.datasets import ImageNet
from mmseg.datasets import ADE20KDataset

from beit_plugin.registry import DATASETS
from .demo_data import (SEG_CLASSES, SHAPE_CLASSES, check_demo_root,
                        ensure_demo_data, read_marker)


def ensure_demo_root(data_root: str) -> None:
    """Generate the default demo set holding ``data_root`` (its parent
    folder) unless a complete one is there.

    A complete set made with other parameters (e.g. a small one made by
    ``make_demo_data`` for a test) is used as it is, not regenerated. A
    parent folder that holds anything but a demo set (e.g. ``data/`` for
    ``data_root='data/imagenet'``, next to a user's own ImageNet) raises
    :class:`~beit_plugin.datasets.demo_data.ForeignDataError` on every rank
    before anything is written.
    """
    rank, world_size = get_dist_info()
    root = Path(data_root).parent
    params = read_marker(root)
    if params is None or 'state' in params:
        check_demo_root(root)
        if rank == 0:
            # said aloud: a mistyped or not-yet-made root (e.g. a held-out
            # set from tools/make_demo_data.py) would otherwise silently
            # become a copy of the default set
            print_log(f'{root} holds no complete demo set: generating the '
                      'default one (seed 0) there', logger='current')
            ensure_demo_data(root)
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
    # what a model built from a demo config without a checkpoint's meta
    # (MMPretrain's get_model, the inferencers) names its classes
    METAINFO = dict(classes=SHAPE_CLASSES)

    def __init__(self, data_root: str = 'data/demo/imagenet',
                 **kwargs) -> None:
        ensure_demo_root(data_root)
        kwargs.setdefault('classes', str(Path(data_root) / 'meta' /
                                         'classes.txt'))
        super().__init__(data_root=data_root, **kwargs)


@DATASETS.register_module()
class DemoADE20K(ADE20KDataset):
    """MMSegmentation's ``ADE20KDataset`` over ``<demo root>/ade``.

    The demo annotations follow ADE20K (0 = not labelled, 1 = background,
    ``k + 2`` = shape ``k``); ``reduce_zero_label=True`` (ADE20K's own
    setting) maps them to 255 = ignored and 0..8 = :data:`SEG_CLASSES`.
    MMSegmentation only accepts ``metainfo`` classes that are a subset of the
    dataset class's ``METAINFO``, hence this subclass with its own 9 classes
    (and the first 9 colours of ADE20K's palette).

    Args:
        data_root (str): the demo set's ADE folder. Defaults to
            ``'data/demo/ade'``.
        data_prefix (dict): image / annotation folders; defaults to the
            training split (``images/training``, ``annotations/training``).
        **kwargs: as :class:`mmseg.datasets.ADE20KDataset` (``pipeline``,
            ``reduce_zero_label`` ...).
    """
    METAINFO = dict(
        classes=SEG_CLASSES,
        palette=ADE20KDataset.METAINFO['palette'][:len(SEG_CLASSES)])

    def __init__(self,
                 data_root: str = 'data/demo/ade',
                 data_prefix: dict = dict(
                     img_path='images/training',
                     seg_map_path='annotations/training'),
                 **kwargs) -> None:
        ensure_demo_root(data_root)
        super().__init__(data_root=data_root, data_prefix=data_prefix,
                         **kwargs)
