"""A small, deterministic, labelled "shapes" image set in real on-disk layouts.

:func:`make_demo_data` draws synthetic images -- one of eight shape classes
over a randomly textured background -- and writes them exactly as the real
datasets are laid out, so that the unchanged loading code of MMPretrain
(``ImageNet`` / ``CustomDataset``) and MMSegmentation (``ADE20KDataset``)
reads them::

    <root>/
    ├── .complete                       JSON of the generation parameters,
    │                                   written last (see "Idempotence")
    ├── imagenet/                       classification, ImageNet layout
    │   ├── meta/
    │   │   ├── classes.txt             one class name a line, index order
    │   │   ├── train.txt               "bar/bar_00003.JPEG 0" a line,
    │   │   └── val.txt                 relative to train/ resp. val/
    │   ├── train/<class>/<class>_NNNNN.JPEG
    │   └── val/<class>/<class>_NNNNN.JPEG
    └── ade/                            segmentation, ADEChallengeData2016
        ├── images/training/ADE_train_NNNNNNNN.jpg
        ├── images/validation/ADE_val_NNNNNNNN.jpg
        ├── annotations/training/ADE_train_NNNNNNNN.png
        └── annotations/validation/ADE_val_NNNNNNNN.png

Classes (:data:`SHAPE_CLASSES`, alphabetical, so that the label indices in
``meta/*.txt`` equal the indices MMPretrain gives the class folders when it
scans them): ``bar, circle, crescent, cross, ring, square, star, triangle``.

Classification images: ``cls_size x cls_size`` (default 64 x 64) RGB JPEGs,
each holding ONE shape whose class is the label; the classes are balanced
within a split. Default counts: 1600 train (200 a class), 320 val (40 a class).

Segmentation images: ``seg_size x seg_size`` (default 96 x 96) RGB JPEGs,
each holding 1 to 3 shapes (the classes balanced over a split's shapes;
later shapes may partly occlude earlier ones). A shape's radius is 15-28 %
of ``seg_size``, at the defaults the 14-27 px of the classification shapes
(22-42 % of ``cls_size``): the scale the pretraining sees, and at least 3.5
patches of 8 px across. Default counts: 480 training,
96 validation. The annotation is a single-channel uint8 PNG of the same size
and file stem, following ADE20K's convention that 0 is "not labelled":

* ``0``: ignore -- the band of pixels within ``ignore_band`` px (default 1)
  of a boundary between two different labels, where anti-aliasing and JPEG
  blur mix the two regions;
* ``1``: ``background`` (a real class, so most pixels are labelled);
* ``2 .. 9``: the shapes, in :data:`SHAPE_CLASSES` order.

With ``ADE20KDataset``'s ``reduce_zero_label=True`` these become 255
(ignored), 0 = background and 1..8 = shapes, i.e. the class list
:data:`SEG_CLASSES` = ``('background',) + SHAPE_CLASSES``. MMSegmentation
only accepts ``metainfo`` classes that are a subset of the dataset class's
own 150 ADE20K classes, so read it with an ``ADE20KDataset`` subclass whose
``METAINFO`` holds :data:`SEG_CLASSES` (and a palette).

The structure is learnable but not colour-coded: shape colour, background
texture (linear gradient, stripes, rotated checkerboard or smooth colour
noise) and its colours, position, size, rotation and a mild anisotropic
stretch are all drawn independently of the class, so only geometry tells the
classes apart.

Determinism: every image uses its own generator seeded from ``(seed, task,
split, index)``, so the same seed (and the same numpy / OpenCV versions)
gives byte-identical files. The default set (2496 images and 576
annotations) takes about 5 s on one core and holds about 6 MB.

Idempotence: the ``.complete`` marker records the generation parameters. A
call whose parameters equal the marker's returns at once; otherwise (or with
``force=True``) the set is written again.

Safety: the set is written only into a folder that is missing, empty, or
marked as the project's by ``.complete`` (which is written first, with
``"state": "writing"``, and rewritten without it after the last file, so an
interrupted run is also recognised as ours). Anything else raises
:class:`ForeignDataError` naming the folder. Regenerating deletes only the
files that the marker's parameters name (the demo's file names are
determined by them) and then the folders those files leave empty; a file
the project did not write is never deleted.
"""
import json
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from ..progress import track

SHAPE_CLASSES: Tuple[str, ...] = ('bar', 'circle', 'crescent', 'cross',
                                  'ring', 'square', 'star', 'triangle')
SEG_CLASSES: Tuple[str, ...] = ('background', ) + SHAPE_CLASSES
IGNORE_LABEL = 0  # in the annotation PNGs (255 after ``reduce_zero_label``)
BACKGROUND_LABEL = 1  # shape ``SHAPE_CLASSES[k]`` is written as ``k + 2``

_FORMAT_VERSION = 2  # bump when the drawing changes, to invalidate old sets
# (2: segmentation shapes at the classification shapes' pixel size)
_MARKER = '.complete'
_SUPERSAMPLE = 4  # shape masks are drawn this much larger, then area-averaged
_SUBPIXEL_BITS = 4  # fractional bits of cv2.fillPoly vertex coordinates
# shape radii as fractions of the image side: equal in pixels at the default
# sizes (64 px classification, 96 px segmentation images)
_CLS_RADIUS = (0.22, 0.42)
_SEG_RADIUS = (0.15, 0.28)
_TASK_CLS, _TASK_SEG = 0, 1
_STREAM_LABELS, _STREAM_IMAGE = 0, 1

Polygon = np.ndarray  # (V, 2) float vertices (x, y), unit-radius frame


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> Polygon:
    """Vertices of a regular ``n``-gon of circumradius ``radius``."""
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star() -> Polygon:
    """A five-pointed star: outer radius 1, inner radius 0.45."""
    radii = np.tile([1.0, 0.45], 5)
    t = -np.pi / 2 + np.pi * np.arange(10) / 5
    return radii[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)


def _cross() -> Polygon:
    """A plus sign with arms of half-width 0.3 reaching radius 1."""
    a, w = 1.0, 0.3
    return np.array([[w, w], [a, w], [a, -w], [w, -w], [w, -a], [-w, -a],
                     [-w, -w], [-a, -w], [-a, w], [-w, w], [-w, a], [w, a]])


# Each shape, in a frame where its extent is about the unit disc:
# (polygons filled, polygons then cut out again).
_SHAPES: Dict[str, Tuple[List[Polygon], List[Polygon]]] = {
    'bar': ([np.array([[-1, -.35], [1, -.35], [1, .35], [-1, .35]])], []),
    'circle': ([_regular(48)], []),
    'crescent': ([_regular(48)], [_regular(48, 0.85) + [0.5, 0.0]]),
    'cross': ([_cross()], []),
    'ring': ([_regular(48)], [_regular(48, 0.55)]),
    'square': ([_regular(4, phase=np.pi / 4)], []),
    'star': ([_star()], []),
    'triangle': ([_regular(3, phase=-np.pi / 2)], []),
}
assert tuple(sorted(_SHAPES)) == SHAPE_CLASSES


def _rotation(angle: float) -> np.ndarray:
    """The ``(2, 2)`` matrix rotating column vectors by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _shape_coverage(rng: np.random.Generator, name: str, size: int,
                    centre: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage of one randomly rotated and stretched shape.

    Returns:
        ``(size, size)`` float32 array in [0, 1]: the fraction of each pixel
        the shape covers (drawn ``_SUPERSAMPLE`` times larger, area-averaged).
    """
    stretch = rng.uniform(0.85, 1.15)
    transform = (_rotation(rng.uniform(0, 2 * np.pi)) @ np.diag(
        [stretch, 1 / stretch]) @ _rotation(rng.uniform(0, 2 * np.pi)))
    hi = size * _SUPERSAMPLE
    scale = _SUPERSAMPLE * (1 << _SUBPIXEL_BITS)
    mask = np.zeros((hi, hi), np.uint8)
    fills, holes = _SHAPES[name]
    for polygons, value in ((fills, 255), (holes, 0)):
        if polygons:
            points = [
                np.round((radius * p @ transform.T + centre) * scale).astype(
                    np.int32) for p in polygons
            ]
            cv2.fillPoly(mask, points, value, cv2.LINE_8, _SUBPIXEL_BITS)
    small = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray,
                     min_distance: float = 100.0) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` from every row of
    ``avoid`` (``(N, 3)``) if one of 32 candidates is, else the farthest."""
    candidates = rng.uniform(0, 255, (32, 3))
    distance = np.linalg.norm(
        candidates[:, None] - avoid[None], axis=-1).min(axis=1)
    ok = np.flatnonzero(distance >= min_distance)
    return candidates[ok[0] if ok.size else distance.argmax()]


def _near_colours(rng: np.random.Generator, base: np.ndarray,
                  n: int) -> np.ndarray:
    """``(n, 3)`` colours within 15..70 (RGB distance) of ``base``."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    offsets = direction * rng.uniform(15, 70, (n, 1))
    return np.clip(base + offsets, 0, 255)


def _background(rng: np.random.Generator,
                size: int) -> Tuple[np.ndarray, np.ndarray]:
    """A random textured background of moderate contrast.

    A random base colour is modulated, with colours near it, by a linear
    gradient, soft stripes, a rotated checkerboard or smooth colour noise.

    Returns:
        ``(image, palette)``: ``(size, size, 3)`` float32 RGB in [0, 255] and
        the ``(N, 3)`` colours it mixes (for choosing contrasting shapes).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * xx + np.sin(angle) * yy  # (size, size)
    across = -np.sin(angle) * xx + np.cos(angle) * yy
    base = rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    if kind == 3:  # smooth colour noise: a coarse random grid, upsampled
        cells = int(rng.integers(3, 7))
        palette = _near_colours(rng, base, cells * cells)
        grid = palette.reshape(cells, cells, 3).astype(np.float32)
        image = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        return np.clip(image, 0, 255), palette
    palette = np.concatenate([base[None], _near_colours(rng, base, 1)])
    if kind == 0:  # linear gradient
        weight = (along - along.min()) / (along.max() - along.min())
    elif kind == 1:  # soft stripes
        period = rng.uniform(0.12, 0.4)
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * along / period +
                                    rng.uniform(0, 2 * np.pi))
    else:  # rotated checkerboard
        cell = rng.uniform(0.08, 0.25)
        weight = ((np.floor(along / cell) + np.floor(across / cell)) %
                  2).astype(np.float32)
    image = palette[0] + weight[..., None] * (palette[1] - palette[0])
    return image.astype(np.float32), palette


def _draw(rng: np.random.Generator, size: int, names: List[str],
          radius_range: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``names`` (in order, later ones on top) over a random background.

    Shapes get radii ``radius_range`` (fractions of ``size``), contrasting
    solid colours with a mild shading ramp, and centres at least 0.9 radius
    from the image border and, when 20 tries allow, apart from earlier shapes.

    Returns:
        ``(image, labels)``: ``(size, size, 3)`` uint8 RGB and the
        ``(size, size)`` uint8 map of :data:`BACKGROUND_LABEL` / shape labels
        (``class index + 2``) of the pixels each shape covers at least half.
    """
    image, palette = _background(rng, size)
    labels = np.full((size, size), BACKGROUND_LABEL, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    placed: List[Tuple[np.ndarray, float]] = []
    for name in names:
        radius = rng.uniform(*radius_range) * size
        margin = min(0.9 * radius, size / 2)
        for _ in range(20):
            centre = rng.uniform(margin, size - margin, 2)
            if all(
                    np.linalg.norm(centre - c) > 0.8 * (radius + r)
                    for c, r in placed):
                break
        placed.append((centre, radius))
        coverage = _shape_coverage(rng, name, size, centre, radius)
        colour = _distinct_colour(rng, palette)
        ramp = rng.uniform(-25, 25, 2)
        fill = colour + (ramp[0] * (xx - 0.5) + ramp[1] *
                         (yy - 0.5))[..., None]
        image += coverage[..., None] * (fill - image)
        labels[coverage >= 0.5] = SHAPE_CLASSES.index(name) + 2
    image += rng.normal(0, rng.uniform(2, 10), image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), labels


def _ignore_boundaries(labels: np.ndarray, band: int) -> np.ndarray:
    """Set :data:`IGNORE_LABEL` within ``band`` px of label changes."""
    if band <= 0:
        return labels
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    edge = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    return np.where(edge, IGNORE_LABEL, labels).astype(np.uint8)


def _rng(seed: int, task: int, split: int, stream: int,
         index: int) -> np.random.Generator:
    # fixed length: SeedSequence entropy [a, b] equals [a, b, 0]
    return np.random.default_rng([seed, task, split, stream, index])


def _write(path: Path, image: np.ndarray, params: List[int]) -> None:
    """Encode ``image`` (RGB ``(H, W, 3)`` or label ``(H, W)`` uint8) by the
    extension of ``path`` with OpenCV, and write it."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise ValueError(f'OpenCV cannot encode {path}')
    path.write_bytes(data.tobytes())


def _classification_labels(seed: int, split_id: int, n: int) -> np.ndarray:
    """``(n,)`` class indices of a classification split, balanced."""
    order = _rng(seed, _TASK_CLS, split_id, _STREAM_LABELS, 0)
    return order.permutation(np.arange(n) % len(SHAPE_CLASSES))


def _classification_name(name: str, index: int) -> str:
    """Path of image ``index`` (of class ``name``) in its split folder."""
    return f'{name}/{name}_{index:05d}.JPEG'


def _segmentation_stem(split: str, index: int) -> str:
    """File stem of image ``index`` of ``training`` / ``validation``."""
    prefix = 'ADE_train' if split == 'training' else 'ADE_val'
    return f'{prefix}_{index + 1:08d}'


def _written_files(params: Dict) -> Iterator[Path]:
    """Every file (relative to the root) that :func:`make_demo_data` writes
    with ``params``: the names depend only on the seed and the counts."""
    seed = params.get('seed', 0)
    for split_id, split in enumerate(('train', 'val')):
        yield Path('imagenet', 'meta', f'{split}.txt')
        for index, label in enumerate(
                _classification_labels(seed, split_id,
                                       params.get(f'cls_{split}', 0))):
            yield Path('imagenet', split,
                       _classification_name(SHAPE_CLASSES[label], index))
    yield Path('imagenet', 'meta', 'classes.txt')
    for split, count in (('training', params.get('seg_train', 0)),
                         ('validation', params.get('seg_val', 0))):
        for index in range(count):
            stem = _segmentation_stem(split, index)
            yield Path('ade', 'images', split, f'{stem}.jpg')
            yield Path('ade', 'annotations', split, f'{stem}.png')


def _written_folders() -> List[Path]:
    """The folders :func:`make_demo_data` makes, innermost first."""
    folders = [Path('imagenet', split, name) for split in ('train', 'val')
               for name in SHAPE_CLASSES]
    folders += [Path('imagenet', 'train'), Path('imagenet', 'val'),
                Path('imagenet', 'meta'), Path('imagenet')]
    folders += [Path('ade', kind, split) for kind in ('images', 'annotations')
                for split in ('training', 'validation')]
    folders += [Path('ade', 'images'), Path('ade', 'annotations'), Path('ade')]
    return folders


class ForeignDataError(FileExistsError):
    """A folder the demo set would be written into holds data the project
    did not write."""


def read_marker(root: Union[str, Path]) -> Optional[Dict]:
    """The generation parameters recorded in ``root``'s marker, or None when
    ``root`` has no marker written by :func:`make_demo_data`. A set still
    being written (or interrupted) has ``"state": "writing"``."""
    marker = Path(root) / _MARKER
    try:
        params = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(params, dict) or 'version' not in params:
        return None
    return params


def check_demo_root(root: Union[str, Path]) -> None:
    """Raise :class:`ForeignDataError` unless the demo set may be written
    into ``root``: missing, an empty folder, or one marked as a demo set."""
    root = Path(root)
    if not root.exists() or read_marker(root) is not None:
        return
    if root.is_dir() and not any(root.iterdir()):
        return
    raise ForeignDataError(
        f'{root} is not a demo data folder: it holds files that '
        f'beit_plugin did not write (no {_MARKER} marker), so the demo set '
        'is not generated there and nothing in it is touched. For the demo, '
        'point data_root at a new or empty folder (e.g. data/demo/imagenet, '
        "data/demo/ade); for your own images use a dataset of your own, "
        "e.g. type='CustomDataset' (see README, \"Your own data\", and "
        'configs/own_data/).')


def _remove_written(root: Path, params: Dict) -> None:
    """Delete the files a set made with ``params`` consists of, then the
    demo folders they leave empty; anything else under ``root`` stays."""
    for relative in _written_files(params):
        (root / relative).unlink(missing_ok=True)
    for relative in _written_folders():
        try:
            (root / relative).rmdir()
        except OSError:  # missing, or holds files we did not write
            pass


def _make_classification(root: Path, seed: int, size: int,
                         counts: Dict[str, int], quality: int) -> None:
    """Write ``root`` (the ``imagenet`` folder) in the ImageNet layout."""
    meta = root / 'meta'
    meta.mkdir(parents=True, exist_ok=True)
    (meta / 'classes.txt').write_text('\n'.join(SHAPE_CLASSES) + '\n')
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for split_id, (split, n) in enumerate(counts.items()):
        for name in SHAPE_CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        lines = []
        for index, label in track(
                enumerate(_classification_labels(seed, split_id, n)),
                f'demo data imagenet/{split}', total=n):
            name = SHAPE_CLASSES[label]
            rng = _rng(seed, _TASK_CLS, split_id, _STREAM_IMAGE, index)
            image, _ = _draw(rng, size, [name], _CLS_RADIUS)
            relative = _classification_name(name, index)
            _write(root / split / relative, image, jpeg)
            lines.append(f'{relative} {label}\n')
        (meta / f'{split}.txt').write_text(''.join(lines))


def _make_segmentation(root: Path, seed: int, size: int,
                       counts: Dict[str, int], quality: int,
                       ignore_band: int) -> None:
    """Write ``root`` (the ``ade`` folder) in the ADEChallengeData2016
    layout; ``counts`` maps ``training`` / ``validation`` to sizes."""
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for split_id, (split, n) in enumerate(counts.items()):
        images, annotations = (root / 'images' / split,
                               root / 'annotations' / split)
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        order = _rng(seed, _TASK_SEG, split_id, _STREAM_LABELS, 0)
        shapes_per_image = order.integers(1, 4, n)
        classes = np.split(
            order.permutation(
                np.arange(shapes_per_image.sum()) % len(SHAPE_CLASSES)),
            np.cumsum(shapes_per_image)[:-1])
        for index in track(range(n), f'demo data ade/{split}'):
            rng = _rng(seed, _TASK_SEG, split_id, _STREAM_IMAGE, index)
            names = [SHAPE_CLASSES[label] for label in classes[index]]
            image, labels = _draw(rng, size, names, _SEG_RADIUS)
            stem = _segmentation_stem(split, index)
            _write(images / f'{stem}.jpg', image, jpeg)
            _write(annotations / f'{stem}.png',
                   _ignore_boundaries(labels, ignore_band),
                   [cv2.IMWRITE_PNG_COMPRESSION, 9])


def make_demo_data(root: Union[str, Path] = 'data/demo',
                   seed: int = 0,
                   force: bool = False,
                   cls_size: int = 64,
                   cls_train: int = 1600,
                   cls_val: int = 320,
                   seg_size: int = 96,
                   seg_train: int = 480,
                   seg_val: int = 96,
                   ignore_band: int = 1,
                   jpeg_quality: int = 90) -> Path:
    """Write the demo data set under ``root`` unless it is already there.

    Args:
        root: Output folder (relative paths are relative to the current
            directory); gets ``imagenet/``, ``ade/`` and ``.complete``.
        seed: Non-negative seed; equal seeds give byte-identical files.
        force: Regenerate even if ``root`` holds a complete set made with
            the same parameters.
        cls_size: Side of the square classification images, in pixels.
        cls_train: Number of classification training images.
        cls_val: Number of classification validation images.
        seg_size: Side of the square segmentation images, in pixels.
        seg_train: Number of segmentation training images.
        seg_val: Number of segmentation validation images.
        ignore_band: Half-width in pixels of the ignored (label 0) band
            around label boundaries in the annotations; 0 for none.
        jpeg_quality: OpenCV JPEG quality of the images.

    Returns:
        ``Path(root)``.
    """
    root = Path(root)
    params = dict(
        version=_FORMAT_VERSION,
        seed=int(seed),
        cls_size=cls_size,
        cls_train=cls_train,
        cls_val=cls_val,
        seg_size=seg_size,
        seg_train=seg_train,
        seg_val=seg_val,
        ignore_band=ignore_band,
        jpeg_quality=jpeg_quality)
    previous = read_marker(root)
    if not force and previous == params:
        return root
    check_demo_root(root)
    if seed < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')
    for name in ('cls_train', 'cls_val', 'seg_train', 'seg_val'):
        if params[name] < 0:
            raise ValueError(
                f'{name} (a number of images) must be non-negative, got '
                f'{params[name]}')
    if previous is not None:
        _remove_written(root, previous)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / _MARKER
    # first, so that an interrupted run leaves a folder known to be ours
    marker.write_text(json.dumps(dict(params, state='writing')) + '\n')
    _make_classification(root / 'imagenet', seed, cls_size,
                         dict(train=cls_train, val=cls_val), jpeg_quality)
    _make_segmentation(root / 'ade', seed, seg_size,
                       dict(training=seg_train, validation=seg_val),
                       jpeg_quality, ignore_band)
    marker.write_text(json.dumps(params, indent=2, sort_keys=True) + '\n')
    return root


def ensure_demo_data(root: Union[str, Path] = 'data/demo') -> str:
    """Make the default demo set under ``root`` if missing; for configs.

    Returns:
        ``root`` as a string, to use as a config's ``data_root`` base.
    """
    return str(make_demo_data(root))
