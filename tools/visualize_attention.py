"""Save PNGs of a BEiT backbone's self-attention: the attention of reference
patches (the BEiT paper's figure) and the CLS token's attention per head.

The model is built from CONFIG (a pretraining, classification,
segmentation or VQ-KD config of ours) and CKPT is loaded into it, weights
only, as everywhere in the plugin (a file that would run code is refused).
The backbone is ``model.backbone`` when it is a ``beit_plugin.BEiT``, else
the first one inside the model (a VQ-KD tokenizer's encoder); every tensor
the attention depends on (patch embedding, tokens, position tables, blocks)
must be in CKPT, which may be a pretraining checkpoint for a fine-tuning or
segmentation config (the backbone adapts it as it loads).

Each IMAGE goes through the config's test pipeline (``test_dataloader``,
else ``val_dataloader``), less its annotation loading and packing; a config
without one (pretraining, tokenizers) resizes the image to the backbone's
input size. ``--size`` resizes to the given size instead; sides that are not
multiples of the patch size are resized down to the nearest ones. The image
is then normalised as the model's data preprocessor does (its first view).

For each image and chosen block ``n`` (numbered from 1, as
``tools/probe_layers.py`` prints them) it writes:

- ``<stem>_block<n>_points.png``: the input with the reference patches
  outlined, then, for each reference patch, its attention over the patches
  (mean over heads);
- ``<stem>_block<n>_cls.png``: the input, then the CLS token's attention over
  the patches, one tile per head.

Each map is scaled to its own maximum and drawn with OpenCV's JET colour
map (blue: none, red: the maximum) over the image, patch by patch; the
reference patch is outlined in white. Tiles are the input enlarged
``--scale`` times (default: to at least 224 px), in rows of
``ceil(sqrt(tiles))``.

Examples::

    python tools/visualize_attention.py configs/beit_pretrain.py \\
        work_dirs/beit_pretrain/iter_800.pth \\
        data/demo/imagenet/val/star/star_00012.JPEG --out-dir attention
    python tools/visualize_attention.py configs/seg/beit_demo_upernet.py \\
        work_dirs/beit_pretrain/iter_800.pth \\
        data/demo/ade/images/validation/ADE_val_0000000[1-4].jpg \\
        --layers 1 -1 --points 2,3 40,60px --out-dir attention
"""
import argparse
import copy
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

import beit_plugin  # noqa: F401  (registers our models; weights-only loading)
from beit_plugin.models.backbones import BEiT

#: weight of the colour map over the image
ALPHA = 0.6
PAD = 2  # px of white between tiles
#: backbone tensors the attention depends on (names under the backbone)
ATTENTION_KEYS = ('patch_embed.', 'cls_token', 'pos_embed', 'rel_pos_bias.',
                  'blocks.')

Point = Tuple[int, int, bool]  # x, y, in pixels (else patch column, row)


def parse_point(text: str) -> Point:
    """``'X,Y'`` (patch column and row, from 0) or ``'X,Ypx'`` (pixel x and
    y of the model's input image) -> ``(x, y, in_pixels)``."""
    pixels = text.endswith('px')
    parts = (text[:-2] if pixels else text).split(',')
    try:
        x, y = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not X,Y (patch column, row) or X,Ypx (pixels)')
    return x, y, pixels


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Self-attention maps of a BEiT backbone as PNG')
    parser.add_argument('config', help='config whose model holds our BEiT')
    parser.add_argument('checkpoint', help='checkpoint to load')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument(
        '--layers', type=int, nargs='+',
        help='blocks, numbered from 1 (negative: from the end; default: '
        'the middle and the last block)')
    parser.add_argument(
        '--points', type=parse_point, nargs='+',
        help='reference patches: X,Y = patch column and row (from 0), or '
        'X,Ypx = pixel x and y of the input image (default: the centre '
        'and four points around it)')
    parser.add_argument('--out-dir', default='attention',
                        help='folder for the PNGs (default: attention)')
    parser.add_argument(
        '--size', type=int, nargs='+', metavar='PX',
        help='resize the images to this input size instead of the '
        "config's test-time resizing: one side, or height and width")
    parser.add_argument(
        '--scale', type=int,
        help='enlarge each tile this many times (default: the least that '
        'makes the longer side at least 224 px)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, as key=value pairs')
    return parser.parse_args(argv)


def find_backbone(model: nn.Module) -> Tuple[str, BEiT]:
    """The BEiT of ``model`` and its state-dict prefix: ``model.backbone``
    if it is one, else the first BEiT among the modules."""
    if isinstance(getattr(model, 'backbone', None), BEiT):
        return 'backbone.', model.backbone
    for name, module in model.named_modules():
        if isinstance(module, BEiT):
            return (name + '.' if name else ''), module
    raise TypeError(f'{type(model).__name__} holds no beit_plugin.BEiT')


def load_weights(model: nn.Module, backbone: BEiT, prefix: str,
                 checkpoint: str) -> None:
    """Load ``checkpoint`` (weights only) into ``model``; a file without
    keys under ``prefix`` is tried as the backbone's own state dict.

    Raises:
        ValueError: the file lacks a tensor the attention depends on.
    """
    state = _load_checkpoint(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    if prefix and any(k.startswith(prefix) for k in state):
        missing = model.load_state_dict(state, strict=False).missing_keys
        missing = [k[len(prefix):] for k in missing if k.startswith(prefix)]
    else:
        missing = backbone.load_state_dict(state, strict=False).missing_keys
    missing = [k for k in missing if k.startswith(ATTENTION_KEYS)]
    if missing:
        raise ValueError(
            f'{checkpoint} has no weights for {len(missing)} tensors of the '
            f'backbone ({prefix or "the model"}), e.g. {missing[:3]}: it is '
            'not a checkpoint of this model')


def input_norm(preprocessor: nn.Module
               ) -> Tuple[np.ndarray, np.ndarray, bool]:
    """``mean``, ``std`` (per channel, 0-255) and whether BGR becomes RGB,
    read off an MMEngine / MMPretrain / MMSegmentation data preprocessor
    (the first view of a two-view one)."""
    to_rgb = any(
        getattr(preprocessor, name, False)
        for name in ('_channel_conversion', 'channel_conversion', 'to_rgb'))
    if getattr(preprocessor, '_enable_normalize', False):
        return (preprocessor.mean.flatten().cpu().numpy(),
                preprocessor.std.flatten().cpu().numpy(), to_rgb)
    return np.zeros(3), np.ones(3), to_rgb


def _type_name(step: dict) -> str:
    kind = step['type']
    return (kind if isinstance(kind, str) else kind.__name__).split('.')[-1]


def inference_pipeline(cfg: Config) -> Optional[Compose]:
    """The config's test (else val) pipeline without annotation loading and
    packing; None if the config has neither."""
    for key in ('test_dataloader', 'val_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('dataset', {}).get('pipeline'):
            steps = [
                copy.deepcopy(step) for step in loader.dataset.pipeline
                if not _type_name(step).startswith('Pack')
                and 'LoadAnnotations' not in _type_name(step)
            ]
            return Compose(steps)
    return None


def _resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``img`` resized to ``size`` = (height, width)."""
    if img.shape[:2] == tuple(size):
        return img
    shrink = size[0] * size[1] < img.shape[0] * img.shape[1]
    return cv2.resize(img, (size[1], size[0]),
                      interpolation=cv2.INTER_AREA if shrink else
                      cv2.INTER_CUBIC)


def load_input(path: str, pipeline: Optional[Compose],
               size: Optional[Tuple[int, int]], backbone: BEiT
               ) -> np.ndarray:
    """The model's input image, ``(H, W, 3)`` BGR uint8 with sides that are
    multiples of the patch size (see the module docstring)."""
    if pipeline is not None:
        img = pipeline(dict(img_path=path))['img']
    else:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'{path}: not an image OpenCV can read')
    patch = backbone.patch_size
    if size is None and pipeline is None:
        size = tuple(g * patch for g in backbone.patch_grid)
    if size is None:
        size = tuple(max(patch, side // patch * patch)
                     for side in img.shape[:2])
    if size[0] % patch or size[1] % patch:
        raise ValueError(f'--size {size} is not a multiple of the patch '
                         f'size {patch}')
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = img.clip(0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(_resize(img, size)[..., :3])


def to_tensor(img: np.ndarray, mean: np.ndarray, std: np.ndarray,
              to_rgb: bool) -> torch.Tensor:
    """``(H, W, 3)`` BGR uint8 -> ``(1, 3, H, W)`` normalised float."""
    if to_rgb:
        img = img[..., ::-1]
    x = (img.astype(np.float32) - mean.astype(np.float32)) / std.astype(
        np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def default_points(grid: Tuple[int, int]) -> List[Point]:
    """The centre patch and four around it, halfway to the corners."""
    h, w = grid
    cells = [(w // 2, h // 2), (w // 4, h // 4), (3 * w // 4, h // 4),
             (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)]
    return [(x, y, False) for x, y in dict.fromkeys(cells)]


def point_cell(point: Point, grid: Tuple[int, int],
               patch: int) -> Tuple[int, int]:
    """A point's patch, ``(row, column)``."""
    x, y, pixels = point
    col, row = (x // patch, y // patch) if pixels else (x, y)
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        where = f'{x},{y}px' if pixels else f'{x},{y}'
        raise ValueError(
            f'point {where} is outside the {grid[1]} x {grid[0]} patch '
            f'grid ({grid[1] * patch} x {grid[0] * patch} px) of the input')
    return row, col


def overlay(tile: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``heat`` ``(h, w)`` over a ``(H, W, 3)`` BGR tile (``H`` a multiple
    of ``h``): scaled to its maximum, JET colours, weight :data:`ALPHA`,
    one colour per patch."""
    top = float(heat.max())
    level = np.round(255 * heat / top) if top > 0 else np.zeros_like(heat)
    colours = cv2.applyColorMap(level.astype(np.uint8)[..., None],
                                cv2.COLORMAP_JET)
    colours = cv2.resize(colours, (tile.shape[1], tile.shape[0]),
                         interpolation=cv2.INTER_NEAREST)
    mixed = (1 - ALPHA) * tile.astype(np.float32) + ALPHA * colours
    return mixed.round().astype(np.uint8)


def outline(tile: np.ndarray, cell: Tuple[int, int], side: int) -> None:
    """Outline patch ``cell`` (``side`` px) in white, in place."""
    top, left = cell[0] * side, cell[1] * side
    cv2.rectangle(tile, (left, top), (left + side - 1, top + side - 1),
                  (255, 255, 255), 1)


def label(tile: np.ndarray, text: str) -> None:
    """Write ``text`` in the top left corner, in place (tiles >= 64 px)."""
    if tile.shape[1] < 64:
        return
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    colour, thickness, cv2.LINE_AA)


def make_grid(tiles: List[np.ndarray]) -> np.ndarray:
    """Equal tiles on white, ``ceil(sqrt(n))`` per row, :data:`PAD` apart
    and around."""
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    height, width = tiles[0].shape[:2]
    canvas = np.full((rows * (height + PAD) + PAD,
                      cols * (width + PAD) + PAD, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        top = PAD + index // cols * (height + PAD)
        left = PAD + index % cols * (width + PAD)
        canvas[top:top + height, left:left + width] = tile
    return canvas


def render(img: np.ndarray, weights: torch.Tensor,
           cells: List[Tuple[int, int]], patch: int, scale: int,
           title: str = 'input') -> Tuple[np.ndarray, np.ndarray]:
    """The points and CLS pictures of one block.

    Args:
        img: ``(H, W, 3)`` BGR uint8 input.
        weights: ``(heads, 1+N, 1+N)`` attention of the block.
        cells: reference patches ``(row, column)``.
        patch: patch size.
        scale: enlargement of the tiles.
        title: label of the first tile (the input).
    """
    grid = (img.shape[0] // patch, img.shape[1] // patch)
    side = patch * scale
    base = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale),
                      interpolation=cv2.INTER_NEAREST)
    weights = weights.float().cpu().numpy()
    first = base.copy()
    for cell in cells:
        outline(first, cell, side)
    label(first, title)
    point_tiles = [first]
    for row, col in cells:
        heat = weights[:, 1 + row * grid[1] + col, 1:].mean(0)
        tile = overlay(base, heat.reshape(grid))
        outline(tile, (row, col), side)
        label(tile, f'{col},{row}')
        point_tiles.append(tile)
    cls_tiles = [base.copy()]
    label(cls_tiles[0], title)
    for head in range(weights.shape[0]):
        tile = overlay(base, weights[head, 0, 1:].reshape(grid))
        label(tile, f'head {head + 1}')
        cls_tiles.append(tile)
    return make_grid(point_tiles), make_grid(cls_tiles)


def block_numbers(layers: Optional[Sequence[int]], depth: int) -> List[int]:
    """``--layers`` (from 1, negative from the end) -> block indices from 0;
    default the middle and the last block."""
    if not layers:
        return sorted({max(depth // 2 - 1, 0), depth - 1})
    indices = []
    for number in layers:
        if number == 0 or not -depth <= number <= depth:
            raise ValueError(f'--layers {number}: the backbone has blocks '
                             f'1 .. {depth} (or -1 .. -{depth})')
        indices.append(number - 1 if number > 0 else number % depth)
    return list(dict.fromkeys(indices))


def build_model(cfg: Config) -> nn.Module:
    """The config's model, with the top-level ``data_preprocessor`` as the
    Runner merges it in."""
    init_default_scope(cfg.get('default_scope', 'beit_plugin'))
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    return MODELS.build(model_cfg)


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the PNGs; return their paths."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg)
    prefix, backbone = find_backbone(model)
    load_weights(model, backbone, prefix, args.checkpoint)
    backbone.eval()
    mean, std, to_rgb = input_norm(model.data_preprocessor)
    pipeline = inference_pipeline(cfg) if args.size is None else None
    size = None if args.size is None else (
        tuple(args.size * 2) if len(args.size) == 1 else tuple(args.size))
    if size is not None and len(size) != 2:
        raise ValueError('--size takes one side, or height and width')
    layers = block_numbers(args.layers, backbone.num_layers)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    stems: Dict[str, int] = {}
    for path in args.images:
        img = load_input(path, pipeline, size, backbone)
        patch = backbone.patch_size
        grid = (img.shape[0] // patch, img.shape[1] // patch)
        cells = [point_cell(point, grid, patch)
                 for point in args.points or default_points(grid)]
        scale = args.scale or max(1, math.ceil(224 / max(img.shape[:2])))
        with torch.no_grad():
            maps = backbone.attention_maps(
                to_tensor(img, mean, std, to_rgb), layers)
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:
            stem = f'{stem}_{stems[stem]}'
        for index in layers:
            points, cls = render(img, maps[index][0], cells, patch, scale,
                                 f'block {index + 1}')
            for kind, picture in (('points', points), ('cls', cls)):
                out = out_dir / f'{stem}_block{index + 1}_{kind}.png'
                if not cv2.imwrite(str(out), picture):
                    raise OSError(f'could not write {out}')
                written.append(out)
        print(f'{path}: {img.shape[0]} x {img.shape[1]} px input, '
              f'{grid[0]} x {grid[1]} patches, blocks '
              f'{", ".join(str(i + 1) for i in layers)} -> {out_dir}/'
              f'{stem}_block*.png')
    return written


if __name__ == '__main__':
    main()
