"""``tools/test.py --show-dir`` saves a picture of every test image, for
classification (MMPretrain's VisualizationHook) and segmentation
(MMSegmentation's SegVisualizationHook), with tiny random models on the
demo configs' tiny generated data.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from beit_plugin.datasets.demo_data import make_demo_data
from helpers import (CONFIGS, TINY_ARCH, load_tool, randomise,
                     write_tiny_seg_demo_config)

CLS_IMAGES, SEG_IMAGES = 7, 3  # batches of 3 and 2: the last one partial
CLS_SIZE, SEG_SIZE = 64, 96  # demo images (px)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=8, cls_val=CLS_IMAGES, seg_train=1,
                   seg_val=SEG_IMAGES)
    return root


def save_model(cfg: Config, scope: str, path: Path) -> Path:
    """A checkpoint of the config's model with random weights."""
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = randomise(MODELS.build(cfg.model), scale=0.05)
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def image_files(folder: Path):
    """The image files under ``folder``, sorted."""
    return sorted(p for p in folder.rglob('*') if p.suffix.lower() in (
        '.jpeg', '.jpg', '.png'))


def check_pictures(pngs, names, shape) -> None:
    """One readable, non-blank PNG of ``shape`` per name in ``names``."""
    assert sorted(p.stem for p in pngs) == sorted(names), pngs
    for path in pngs:
        picture = cv2.imread(str(path))
        assert picture is not None, path
        assert picture.shape == shape, path
        assert float(picture.std()) > 0, path  # not blank


@pytest.mark.slow
def test_show_dir_saves_every_classification_image(demo_root, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    data_root = demo_root / 'imagenet'
    config = tmp_path / 'tiny_cls_demo.py'
    config.write_text(f"""
_base_ = {str(CONFIGS / 'finetune' / 'beit_demo_finetune.py')!r}
model = dict(backbone=dict(arch={TINY_ARCH!r}, init_cfg=None),
             head=dict(in_channels={TINY_ARCH['embed_dims']}))
test_dataloader = dict(
    batch_size=3, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={str(data_root)!r}))
""")
    checkpoint = save_model(Config.fromfile(config), 'mmpretrain',
                            tmp_path / 'cls.pth')
    show_dir = tmp_path / 'show'
    with DefaultScope.overwrite_default_scope('mmengine'):
        metrics = load_tool('test').main([
            str(config), str(checkpoint), '--work-dir',
            str(tmp_path / 'work'), '--show-dir', str(show_dir)])
    assert 'accuracy/top1' in metrics
    images = image_files(data_root / 'val')
    assert len(images) == CLS_IMAGES
    # MMPretrain's VisualizationHook: <show_dir>/<image file name>_0.png
    check_pictures(sorted(show_dir.glob('*.png')),
                   [f'{p.name}_0' for p in images],
                   (CLS_SIZE, CLS_SIZE, 3))


@pytest.mark.slow
def test_show_dir_saves_every_segmentation_image(demo_root, tmp_path,
                                                 monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    ade_root = demo_root / 'ade'
    config = write_tiny_seg_demo_config(tmp_path, ade_root)
    checkpoint = save_model(Config.fromfile(config), 'mmseg',
                            tmp_path / 'seg.pth')
    show_dir = tmp_path / 'show'
    with DefaultScope.overwrite_default_scope('mmseg'):
        metrics = load_tool('test').main([
            str(config), str(checkpoint), '--work-dir',
            str(tmp_path / 'work'), '--show-dir', str(show_dir)])
    assert 0.0 <= metrics['mIoU'] <= 100.0
    images = image_files(ade_root / 'images' / 'validation')
    assert len(images) == SEG_IMAGES
    # SegVisualizationHook, through the visualizer (save_dir = show_dir):
    # <show_dir>/vis_data/vis_image/test_<image file name>_0.png, the ground
    # truth beside the prediction, each over the image
    pngs = sorted(show_dir.rglob('*.png'))
    check_pictures(pngs, [f'test_{p.name}_0' for p in images],
                   (SEG_SIZE, 2 * SEG_SIZE, 3))
    # the two halves differ (ground truth vs a random model's prediction)
    halves = cv2.imread(str(pngs[0]))
    assert not np.array_equal(halves[:, :SEG_SIZE], halves[:, SEG_SIZE:])
