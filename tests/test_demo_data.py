"""Tests of the demo data generator :mod:`beit_plugin.datasets.demo_data`."""
import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beit_plugin.datasets import demo_data
from beit_plugin.datasets.demo_data import (BACKGROUND_LABEL, IGNORE_LABEL,
                                            SEG_CLASSES, SHAPE_CLASSES,
                                            make_demo_data)
from helpers import load_tool

SMALL = dict(cls_train=48, cls_val=16, seg_train=12, seg_val=6)


@pytest.fixture(scope='module')
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set, generated once for the read-only tests."""
    return make_demo_data(tmp_path_factory.mktemp('demo') / 'demo', **SMALL)


def _contents(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden ones too): relative path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def _read_meta(root: Path, split: str) -> List[Tuple[str, int]]:
    """``(relative path, label)`` lines of ``imagenet/meta/<split>.txt``."""
    lines = (root / 'imagenet' / 'meta' / f'{split}.txt').read_text()
    return [(path, int(label))
            for path, label in (line.rsplit(' ', 1)
                                for line in lines.splitlines())]


def test_deterministic(small: Path, tmp_path: Path) -> None:
    reference = _contents(small)
    assert _contents(make_demo_data(tmp_path / 'same', **SMALL)) == reference
    other = _contents(make_demo_data(tmp_path / 'other', seed=1, **SMALL))

    def images(contents: Dict[str, bytes]) -> set:
        return {
            data
            for path, data in contents.items()
            if path.endswith(('.JPEG', '.jpg'))
        }

    assert len(images(reference)) == 48 + 16 + 12 + 6
    assert images(other).isdisjoint(images(reference))


def test_classification_layout(small: Path) -> None:
    imagenet = small / 'imagenet'
    classes = (imagenet / 'meta' / 'classes.txt').read_text().splitlines()
    assert tuple(classes) == SHAPE_CLASSES
    for split, count in (('train', 48), ('val', 16)):
        samples = _read_meta(small, split)
        assert len(samples) == count
        for path, label in samples:
            assert path.endswith('.JPEG')
            assert path.split('/')[0] == SHAPE_CLASSES[label]
        on_disk = {
            str(p.relative_to(imagenet / split))
            for p in (imagenet / split).rglob('*.JPEG')
        }
        assert on_disk == {path for path, _ in samples}
        # balanced: every class equally often
        assert np.bincount([label for _, label in samples]).tolist() == \
            [count // len(SHAPE_CLASSES)] * len(SHAPE_CLASSES)


def test_mmpretrain_reads_classification(small: Path) -> None:
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets import CustomDataset, ImageNet

    imagenet = str(small / 'imagenet')
    dataset = ImageNet(
        data_root=imagenet,
        split='train',
        classes=str(small / 'imagenet' / 'meta' / 'classes.txt'),
        pipeline=[LoadImageFromFile()])
    assert dataset.CLASSES == SHAPE_CLASSES
    assert len(dataset) == 48
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample['img'].shape == (64, 64, 3)
        folder = Path(sample['img_path']).parent.name
        assert sample['gt_label'] == SHAPE_CLASSES.index(folder)

    # the annotation file and a scan of the class folders agree
    annotated = CustomDataset(
        data_root=imagenet, ann_file='meta/val.txt', data_prefix='val')
    scanned = CustomDataset(data_root=imagenet, data_prefix='val')
    assert scanned.CLASSES == SHAPE_CLASSES

    def pairs(dataset: CustomDataset) -> List[Tuple[str, int]]:
        return sorted((dataset.get_data_info(i)['img_path'],
                       dataset.get_data_info(i)['gt_label'])
                      for i in range(len(dataset)))

    assert len(annotated) == 16
    assert pairs(annotated) == pairs(scanned)


def test_segmentation_layout(small: Path) -> None:
    ade = small / 'ade'
    seen = np.zeros(len(SEG_CLASSES) + 1, np.int64)  # pixels of 0..K
    for split, prefix, count in (('training', 'ADE_train', 12),
                                 ('validation', 'ADE_val', 6)):
        images = sorted((ade / 'images' / split).iterdir())
        annotations = sorted((ade / 'annotations' / split).iterdir())
        assert [p.stem for p in images] == [p.stem for p in annotations]
        assert [p.name for p in images] == [
            f'{prefix}_{i:08d}.jpg' for i in range(1, count + 1)
        ]
        for image_path, annotation_path in zip(images, annotations):
            image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
            labels = cv2.imread(str(annotation_path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert labels.shape == (96, 96) and labels.dtype == np.uint8
            assert labels.max() <= len(SEG_CLASSES)
            assert (labels == BACKGROUND_LABEL).any()
            assert (labels > BACKGROUND_LABEL).any()
            if split == 'training':
                seen += np.bincount(labels.ravel(), minlength=seen.size)
    assert (seen > 0).all()  # ignore, background and every shape occur
    assert seen.argmax() == BACKGROUND_LABEL
    assert seen[IGNORE_LABEL] < 0.2 * seen.sum()


def test_segmentation_shapes_at_the_classification_scale(
        tmp_path: Path) -> None:
    """Segmentation shapes are drawn as large in pixels as classification
    shapes: the median labelled shape region of 48 images covers at least
    450 px (about a 24 px disc). At the first version's radii (10-24 % of
    96 px) it was 350 px; at the current ones (15-28 %) it is 560 px."""
    root = make_demo_data(
        tmp_path / 'demo', cls_train=8, cls_val=8, seg_train=48, seg_val=0)
    areas = []
    for path in (root / 'ade' / 'annotations' / 'training').iterdir():
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        areas += [int((labels == value).sum())
                  for value in np.unique(labels) if value > BACKGROUND_LABEL]
    assert len(areas) >= 48
    assert np.median(areas) >= 450


def test_mmseg_reads_segmentation(small: Path) -> None:
    try:
        from mmcv.transforms import LoadImageFromFile
        from mmseg.datasets import ADE20KDataset
        from mmseg.datasets.transforms import LoadAnnotations
    except ImportError as error:  # mmcv-lite without beit_plugin.compat
        pytest.skip(f'mmseg cannot be imported: {error}')

    class ShapesADE(ADE20KDataset):
        METAINFO = dict(
            classes=SEG_CLASSES, palette=[[i * 25] * 3 for i in range(9)])

    dataset = ShapesADE(
        data_root=str(small / 'ade'),
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=[LoadImageFromFile(), LoadAnnotations()])
    assert len(dataset) == 6
    for index in range(len(dataset)):
        sample = dataset[index]
        assert Path(sample['img_path']).stem == \
            Path(sample['seg_map_path']).stem
        assert sample['img'].shape == (96, 96, 3)
        raw = cv2.imread(sample['seg_map_path'], cv2.IMREAD_UNCHANGED)
        # reduce_zero_label: 0 -> 255 (ignored), k -> k - 1
        expected = np.where(raw == IGNORE_LABEL, 255, raw.astype(int) - 1)
        np.testing.assert_array_equal(sample['gt_seg_map'], expected)


def test_idempotent(tmp_path: Path) -> None:
    root = tmp_path / 'demo'
    make_demo_data(root, **SMALL)
    files = [p for p in root.rglob('*') if p.is_file()]
    for path in files:
        os.utime(path, ns=(0, 0))

    assert make_demo_data(root, **SMALL) == root
    assert all(p.stat().st_mtime_ns == 0 for p in files)

    make_demo_data(root, force=True, **SMALL)
    assert all(p.stat().st_mtime_ns != 0 for p in files)

    # other parameters: regenerated, without stale files
    make_demo_data(root, **dict(SMALL, cls_train=40))
    assert len(list((root / 'imagenet' / 'train').rglob('*.JPEG'))) == 40
    assert json.loads((root / '.complete').read_text())['cls_train'] == 40


def test_rejects_a_negative_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='cls_val .* non-negative, got -1'):
        make_demo_data(tmp_path / 'demo', **dict(SMALL, cls_val=-1))
    assert not (tmp_path / 'demo').exists()


def test_tool_writes_the_counts_it_is_given(tmp_path: Path) -> None:
    tool = load_tool('make_demo_data')
    root = tool.main(['--root', str(tmp_path / 'heldout'), '--seed', '1',
                      '--cls-train', '8', '--cls-val', '24',
                      '--seg-train', '2', '--seg-val', '3'])
    assert root == tmp_path / 'heldout'
    val = (root / 'imagenet/meta/val.txt').read_text().splitlines()
    assert len(val) == 24
    assert len(list((root / 'imagenet/train').rglob('*.JPEG'))) == 8
    assert len(list((root / 'ade/images/validation').glob('*.jpg'))) == 3
    marker = json.loads((root / '.complete').read_text())
    assert (marker['seed'], marker['cls_val'], marker['seg_train']) == (1, 24,
                                                                        2)
    # without count options: the demo's defaults
    defaults = tool.parse_args(['--root', 'x'])
    assert (defaults.cls_train, defaults.cls_val, defaults.seg_train,
            defaults.seg_val) == (1600, 320, 480, 96)


def test_ensure_demo_data(monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(demo_data, 'make_demo_data',
                        lambda root: calls.append(root) or Path(root))
    assert demo_data.ensure_demo_data(tmp_path / 'd') == str(tmp_path / 'd')
    assert calls == [tmp_path / 'd']


def _load_classification(root: Path,
                         split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(N, H, W, 3)`` float32 RGB images and ``(N,)`` labels."""
    samples = _read_meta(root, split)
    images = [
        cv2.imread(str(root / 'imagenet' / split / path))[..., ::-1]
        for path, _ in samples
    ]
    return (np.stack(images).astype(np.float32),
            np.array([label for _, label in samples]))


def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1).numpy() == y).mean())


@pytest.mark.slow
def test_learnable_but_not_from_colour(tmp_path: Path) -> None:
    """A tiny CNN trained for a few seconds beats chance (1/8) clearly on
    held-out images, while a linear classifier of the mean colour cannot."""
    root = make_demo_data(
        tmp_path / 'demo', cls_train=640, cls_val=240, seg_train=0, seg_val=0)
    train_x, train_y = _load_classification(root, 'train')
    val_x, val_y = _load_classification(root, 'val')
    torch.manual_seed(0)

    # (N, 3) mean colours, standardised with the training statistics
    train_c, val_c = train_x.mean((1, 2)), val_x.mean((1, 2))
    mean, std = train_c.mean(0), train_c.std(0)
    colour_x, colour_y = (torch.from_numpy((train_c - mean) / std),
                          torch.from_numpy(train_y))
    colour = nn.Linear(3, len(SHAPE_CLASSES))
    optimizer = torch.optim.LBFGS(colour.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(colour(colour_x), colour_y)
        loss.backward()
        return loss

    optimizer.step(closure)
    colour_val = torch.from_numpy((val_c - mean) / std)
    assert _accuracy(colour, colour_val, val_y) < 0.22

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        """``(N, 3, 32, 32)``, each image standardised on its own."""
        x = F.avg_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2), 2)
        return (x - x.mean((1, 2, 3), keepdim=True)) / (
            x.std((1, 2, 3), keepdim=True) + 1e-3)

    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(32, len(SHAPE_CLASSES)))
    optimizer = torch.optim.Adam(cnn.parameters(), lr=3e-3)
    x, y = to_tensor(train_x), torch.from_numpy(train_y)
    for _ in range(20):
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(cnn(x[batch]), y[batch]).backward()
            optimizer.step()
    assert _accuracy(cnn, to_tensor(val_x), val_y) > 0.3


def _user_folder(root: Path) -> Dict[str, bytes]:
    """A user's own ImageNet-style data under ``root/imagenet``, plus a note
    at ``root``; returns its contents."""
    image = root / 'imagenet' / 'train' / 'cat' / 'cat_1.jpg'
    image.parent.mkdir(parents=True)
    image.write_bytes(bytes(range(256)) * 4)
    (root / 'notes.txt').write_text('mine\n')
    return _contents(root)


def test_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / 'data'
    before = _user_folder(root)
    for force in (False, True):
        with pytest.raises(demo_data.ForeignDataError,
                           match=f'{root} is not a demo data folder'):
            make_demo_data(root, force=force, **SMALL)
    with pytest.raises(demo_data.ForeignDataError, match='Your own data'):
        load_tool('make_demo_data').main(['--root', str(root), '--force'])
    assert _contents(root) == before


def test_writes_into_an_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / 'empty'
    root.mkdir()
    make_demo_data(root, **SMALL)
    assert demo_data.read_marker(root)['cls_train'] == SMALL['cls_train']


def test_regenerating_deletes_only_its_own_files(tmp_path: Path) -> None:
    root = make_demo_data(tmp_path / 'demo', **SMALL)
    added = {
        root / 'notes.txt': b'mine',
        root / 'imagenet' / 'train' / 'bar' / 'my_bar.jpg': b'\xff\xd8mine',
        root / 'ade' / 'my_ade' / 'x.png': b'mine',
    }
    for path, data in added.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    make_demo_data(root, **dict(SMALL, cls_train=8, seg_train=2))
    assert all(path.read_bytes() == data for path, data in added.items())
    assert len(list((root / 'imagenet' / 'train').rglob('*.JPEG'))) == 8
    assert len(list((root / 'ade' / 'images' / 'training').iterdir())) == 2
    # the folders the smaller set leaves empty are gone, not left behind
    empty = [p for p in root.rglob('*') if p.is_dir() and not any(p.iterdir())]
    assert empty == []


def test_an_interrupted_set_is_ours_and_completed(tmp_path: Path,
                                                  monkeypatch) -> None:
    root = tmp_path / 'demo'

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, '_make_segmentation', interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(root, **SMALL)
    assert demo_data.read_marker(root)['state'] == 'writing'
    monkeypatch.undo()
    make_demo_data(root, **SMALL)
    assert 'state' not in demo_data.read_marker(root)
    assert _contents(root) == _contents(make_demo_data(tmp_path / 'fresh',
                                                       **SMALL))
