"""Save PNGs of images beside their token ids, and the codebook statistics of
a tokenizer over a set of images (PNG and JSON).

CONFIG is a pretraining config, whose ``model.target_generator`` is the
tokenizer (VQ-KD, the dVAE or the DALL-E encoder), or a tokenizer config,
whose ``model`` is one (a VQ-KD config's teacher is left out). The weights
come from ``--checkpoint`` (a tokenizer checkpoint, or a pretraining one
holding ``target_generator.*``), else from the checkpoint the tokenizer's
``init_cfg`` names (``checkpoints/vqkd_demo_hog.pth`` for
``configs/beit_pretrain.py``). They load weights only, every tensor the
token ids depend on must be there, and a VQ-KD codebook never initialised
is refused.

IMAGES are image files and folders (searched recursively). Each image is
resized to the tokenizer's input size with bicubic interpolation, as the
pretraining's second view is (``--size``; by default the pretraining
config's ``second_size``, else a VQ-KD encoder's input size, else the
config's ``RandomResizedCrop`` size), and normalised with the tokenizer's
``input_norm``.

Writes into ``--out-dir``:

- ``<stem>_tokens.png`` for ``--maps`` images, spread evenly over the
  images in their order (files as given, folders sorted): the image beside
  its token map, each patch filled with its id's colour (one fixed colour
  per id, the same in every picture and run, so equal colours are equal
  ids);
- ``codebook_usage.png``: how many tokens each code id received over all
  images, by id and sorted;
- ``codebook_stats.json``: ``images``, ``tokens``, ``vocab_size``,
  ``codes_used``, ``usage`` (their fraction), ``perplexity`` (``exp`` of the
  entropy of the code distribution, as ``CodebookUsageHook`` logs it; the
  vocabulary size when uniform, 1 when collapsed), ``entropy`` (nats),
  ``dead_codes`` (ids never used) and ``counts`` (tokens per id).

Examples::

    python tools/visualize_tokens.py configs/beit_pretrain.py \\
        data/demo/imagenet/val --out-dir tokens
    python tools/visualize_tokens.py configs/vqkd/vqkd_demo_hog.py \\
        data/demo/imagenet/val \\
        --checkpoint work_dirs/vqkd_demo_hog/iter_2000.pth
"""
import argparse
import copy
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

import beit_plugin  # noqa: F401  (registers our models; weights-only loading)
from beit_plugin.engine.hooks.codebook_usage import usage_and_perplexity
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers.base import Tokenizer
from beit_plugin.progress import track
from beit_plugin.visualization import token_colours

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif',
                    '.tiff', '.webp')
#: parts a token id does not depend on (missing from a checkpoint is fine)
NOT_NEEDED = ('teacher.', 'decoder.', 'decode_task_layer.', 'codebook.')
PAD = 2  # px of white between the image and its map


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Token maps and codebook statistics of a tokenizer')
    parser.add_argument('config', help='pretraining or tokenizer config')
    parser.add_argument('images', nargs='+',
                        help='image files and folders (searched '
                        'recursively)')
    parser.add_argument(
        '--checkpoint',
        help="tokenizer weights (default: the tokenizer's init_cfg "
        'checkpoint)')
    parser.add_argument('--out-dir', default='tokens',
                        help='folder for the outputs (default: tokens)')
    parser.add_argument('--maps', type=int, default=8,
                        help='token-map PNGs of this many images, spread '
                        'evenly over them (default: 8)')
    parser.add_argument('--size', type=int, nargs='+', metavar='PX',
                        help='tokenizer input size: one side, or height '
                        'and width (default: see the module docstring)')
    parser.add_argument('--scale', type=int,
                        help='enlarge the pictures this many times '
                        '(default: to at least 224 px)')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='images per forward pass (default: 64)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as key=value pairs')
    return parser.parse_args(argv)


def _type_name(cfg: dict) -> str:
    kind = cfg.get('type', '')
    return (kind if isinstance(kind, str) else kind.__name__).split('.')[-1]


def build_tokenizer(cfg: Config,
                    checkpoint: Optional[str] = None) -> Tokenizer:
    """The config's tokenizer with its weights, frozen (see the module
    docstring).

    Raises:
        ValueError: no checkpoint to load, or one without a tensor the
            token ids depend on, or an uninitialised codebook.
        TypeError: the config's model is no tokenizer.
    """
    init_default_scope(cfg.get('default_scope', 'beit_plugin'))
    tokenizer_cfg = copy.deepcopy(cfg.model.get('target_generator',
                                                cfg.model))
    if tokenizer_cfg.pop('teacher', None) is not None and \
            tokenizer_cfg.get('target_dims') is None:
        tokenizer_cfg.pop('decoder', None)  # it needs the teacher's width
    init_cfg = tokenizer_cfg.pop('init_cfg', None) or {}
    checkpoint = checkpoint or init_cfg.get('checkpoint')
    if not checkpoint:
        raise ValueError(f'the tokenizer of {cfg.filename} names no '
                         'checkpoint in its init_cfg: give --checkpoint')
    tokenizer = MODELS.build(tokenizer_cfg)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f'{type(tokenizer).__name__} is not a tokenizer: give a '
            'pretraining config (model.target_generator) or a tokenizer '
            'config')
    state = _load_checkpoint(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    prefix = 'target_generator.'
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()
                 if k.startswith(prefix)}
    missing = [k for k in tokenizer.load_state_dict(state,
                                                    strict=False).missing_keys
               if not k.startswith(NOT_NEEDED)]
    if missing:
        raise ValueError(
            f'{checkpoint} has no weights for {len(missing)} tensors of the '
            f'{type(tokenizer).__name__}, e.g. {missing[:3]}: it is not a '
            'checkpoint of this tokenizer')
    tokenizer.check_initialised(checkpoint)
    return tokenizer.freeze()


def input_size(cfg: Config, tokenizer: Tokenizer,
               size: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """``(height, width)`` the images are resized to (see the module
    docstring)."""
    if size:
        if len(size) > 2:
            raise ValueError('--size takes one side, or height and width')
        return size[0], size[-1]
    pipeline = cfg.get('train_dataloader', {}).get('dataset', {}).get(
        'pipeline', [])
    crops = []
    for step in pipeline:
        if step.get('second_size'):
            side = step['second_size']
            return (side, side) if isinstance(side, int) else tuple(side)
        if _type_name(step).endswith('RandomResizedCrop') and \
                isinstance(step.get('scale'), int):
            crops.append((step['scale'], step['scale']))
    encoder = getattr(tokenizer, 'encoder', None)
    if isinstance(encoder, BEiT):
        return tuple(g * encoder.patch_size for g in encoder.patch_grid)
    if crops:
        return crops[0]
    raise ValueError(f'{cfg.filename} does not say the tokenizer input '
                     'size: give --size')


def find_images(paths: Sequence[str]) -> List[Path]:
    """Files as given, and the images in folders (recursively, sorted)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob('*')
                            if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f'{path} does not exist')
    if not found:
        raise ValueError(f'no images in {", ".join(paths)}')
    return found


def load_image(path: Path, size: Tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` RGB uint8 image at ``size`` = (height, width)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'{path}: not an image OpenCV can read')
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]),
                         interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img[..., ::-1])


def normalise(images: np.ndarray, norm: Dict) -> torch.Tensor:
    """``(B, H, W, 3)`` RGB uint8 -> ``(B, 3, H, W)`` with ``norm``'s
    ``(pixel - mean) / std``."""
    mean = np.asarray(norm['mean'], np.float32)
    std = np.asarray(norm['std'], np.float32)
    x = (images.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def token_map_picture(img: np.ndarray, ids: np.ndarray,
                      scale: int) -> np.ndarray:
    """The RGB ``img`` ``(H, W, 3)`` beside its ``(h, w)`` token map, both
    enlarged ``scale`` times, :data:`PAD` px of white around and between:
    a BGR ``(H * scale + 2 PAD, 2 W * scale + 3 PAD, 3)`` picture."""
    height, width = img.shape[0] * scale, img.shape[1] * scale
    canvas = np.full((height + 2 * PAD, 2 * width + 3 * PAD, 3), 255,
                     np.uint8)
    canvas[PAD:PAD + height, PAD:PAD + width] = cv2.resize(
        img[..., ::-1], (width, height), interpolation=cv2.INTER_NEAREST)
    canvas[PAD:PAD + height, 2 * PAD + width:2 * PAD + 2 * width] = \
        cv2.resize(token_colours(ids), (width, height),
                   interpolation=cv2.INTER_NEAREST)
    return canvas


def codebook_statistics(counts: np.ndarray, images: int) -> Dict:
    """The JSON statistics (see the module docstring) of ``(K,)`` token
    counts over ``images`` images."""
    used, perplexity = usage_and_perplexity(
        torch.as_tensor(counts, dtype=torch.float64))
    return dict(
        images=images,
        tokens=int(counts.sum()),
        vocab_size=len(counts),
        codes_used=int((counts > 0).sum()),
        usage=used,
        perplexity=perplexity,
        entropy=math.log(perplexity) if perplexity > 0 else 0.,
        dead_codes=np.flatnonzero(counts == 0).tolist(),
        counts=counts.tolist())


def usage_plot(counts: np.ndarray, stats: Dict, path: Path) -> None:
    """Write an 800 x 600 px PNG: tokens per code id, and sorted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(figure)
    by_id, by_rank = figure.subplots(2, 1)
    edges = np.arange(len(counts) + 1)
    by_id.stairs(counts, edges, fill=True)
    by_id.set(xlabel='code id', ylabel='tokens', xlim=(0, len(counts)))
    by_rank.stairs(np.sort(counts)[::-1], edges, fill=True)
    by_rank.set(xlabel='codes, most used first', ylabel='tokens',
                xlim=(0, len(counts)))
    figure.suptitle(
        f'{stats["codes_used"]} of {stats["vocab_size"]} codes used, '
        f'perplexity {stats["perplexity"]:.1f}, '
        f'{len(stats["dead_codes"])} dead; {stats["tokens"]} tokens of '
        f'{stats["images"]} images')
    figure.tight_layout()
    figure.savefig(str(path))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Write the pictures and statistics; return the statistics."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    tokenizer = build_tokenizer(cfg, args.checkpoint)
    size = input_size(cfg, tokenizer, args.size)
    grid = (size[0] // tokenizer.downsample, size[1] // tokenizer.downsample)
    paths = find_images(args.images)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = args.scale or max(1, math.ceil(224 / max(size)))
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    chosen = set(np.linspace(0, len(paths) - 1, min(args.maps, len(paths)))
                 .round().astype(int).tolist()) if args.maps > 0 else set()
    maps, stems = 0, set()
    starts = range(0, len(paths), args.batch_size)
    for start in track(starts, 'tokenizing'):
        batch = paths[start:start + args.batch_size]
        images = np.stack([load_image(path, size) for path in batch])
        with torch.no_grad():
            ids = tokenizer.get_codebook_indices(
                normalise(images, tokenizer.input_norm)).cpu().numpy()
        if ids.shape[1] != grid[0] * grid[1]:
            raise ValueError(f'{ids.shape[1]} tokens from a {size} px input, '
                             f'expected the {grid} grid')
        counts += np.bincount(ids.ravel(), minlength=len(counts))
        for index, (path, img, row) in enumerate(zip(batch, images, ids)):
            if start + index not in chosen:
                continue
            maps += 1
            stem = path.stem if path.stem not in stems else \
                f'{path.stem}_{maps}'
            stems.add(stem)
            out = out_dir / f'{stem}_tokens.png'
            if not cv2.imwrite(str(out), token_map_picture(
                    img, row.reshape(grid), scale)):
                raise OSError(f'could not write {out}')
    stats = codebook_statistics(counts, len(paths))
    (out_dir / 'codebook_stats.json').write_text(json.dumps(stats) + '\n')
    usage_plot(counts, stats, out_dir / 'codebook_usage.png')
    print(f'{len(paths)} images ({size[0]} x {size[1]} px, {grid[0]} x '
          f'{grid[1]} tokens): {stats["codes_used"]} of '
          f'{stats["vocab_size"]} codes used, perplexity '
          f'{stats["perplexity"]:.1f}, {len(stats["dead_codes"])} dead; '
          f'{maps} token maps, codebook_usage.png and codebook_stats.json '
          f'in {out_dir}')
    return stats


if __name__ == '__main__':
    main()
