"""Benchmark our BEiT jobs against the upstream peers, step for step.

For each job, the full training step of our config and of the upstream
project's own config for the same job, built in the same process, on
synthetic inputs of the configs' shapes (random images run through each
config's own train pipeline, collated as its dataloader does):

    data_preprocessor -> loss = model(**data, mode='loss') -> backward ->
    optimizer step through the config's optim_wrapper

(``model.train_step(data, optim_wrapper)``, what MMEngine's train loop calls;
the optim wrapper is built from the config with MMEngine's
``build_optim_wrapper``, its type set by ``--amp`` on both sides alike).
After ``--warmup`` untimed rounds the two sides' steps alternate ``--steps``
times; each side reports the median: ms/step, images/s, peak memory, and
the ratio ours/peer (below 1: ours is faster / smaller); and the FLOPs of
its step (``torch.utils.flop_counter``, one more step run eagerly), the
TFLOP/s its median step achieves and that rate as a share of one large
matrix product's on the same device in the steps' dtype, measured at the
start of the run.

Jobs (``--jobs``, default all), ours vs the peer (upstream's own config):

- ``pretrain-v1``: configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k
  vs mmpretrain::beit/beit_beit-base-p16_8xb256-amp-coslr-300e_in1k
- ``pretrain-v2``: configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-
  300e_in1k vs mmpretrain::beitv2/beitv2_beit-base-p16_8xb256-amp-coslr-
  300e_in1k
- ``finetune``: configs/finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k vs
  mmpretrain::beit/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k
- ``upernet-512`` / ``upernet-640``: configs/seg/beit-base_upernet_8xb2-160k_
  ade20k-512x512 / -640x640 vs mmseg::beit/beit-base_upernet_8xb2-160k_
  ade20k-640x640 (its crop set to 512 for the first)
- ``backbone``: our BEiT vs mmpretrain's BEiTPretrainViT alone, masked forward
  + backward, no optimizer (the former tools/benchmark_backbone.py)
- ``pipeline-v1`` / ``pipeline-v2``: the pretraining data pipeline of the v1 /
  v2 configs alone (JPEG file -> two views + mask), images/s of one process,
  i.e. per dataloader worker; with the pretraining job of the same version in
  the same run, also how many workers keep our step fed

Fair by construction: both sides get the same architecture overrides
(``--arch``), image size, batch, AMP mode and ``--compile``. No weights are
downloaded: the tokenizers (VQ-KD for v2, DALL-E for v1) are random on both
sides -- the targets are meaningless, the work per step is the real one (our
VQ-KD with an initialised codebook, the peer's with ``quantize_kmeans_init``
off; the peer's VQ-KD stays in training mode and updates its codebook every
step, as upstream does); fine-tuning and segmentation backbones start random.

Peak memory is the step's own: the high-water mark during one step above the
level just before it (CUDA: ``max_memory_allocated``; CPU: the process's
peak RSS, ``VmHWM`` reset through ``/proc/self/clear_refs`` after
``malloc_trim``) plus the side's persistent tensors (parameters, buffers,
optimizer state), so that the other side's model, resident in the same
process, is not counted.

``--img-size`` and ``--batch`` take comma-separated lists (the step time's
growth with resolution and batch); ``--profile N`` adds the top N operators
of one profiled step per side; ``--json OUT`` writes every figure.
``--demo`` is a small setting that runs everything on a 2-core CPU in about a
minute.

    python tools/benchmark.py --demo
    python tools/benchmark.py --device cuda --amp bf16 --profile 10 \\
        --json bench.json
    python tools/benchmark.py --jobs finetune --img-size 224,384,512,640 \\
        --batch 16,32 --device cuda --amp bf16
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from torch.utils.flop_counter import (FlopCounterMode,
                                      sdpa_backward_flop_count,
                                      sdpa_flop_count)

import beit_plugin  # noqa: F401  (compat fixes, registries)

ROOT = Path(__file__).resolve().parents[1]

#: ``--arch`` presets, applied as explicit dicts to both sides (the packages'
#: own zoos disagree on names: mmpretrain's 'small' is 768 wide).
ARCHS = {
    'mini': dict(embed_dims=64, num_layers=6, num_heads=2,
                 feedforward_channels=256),
    'tiny': dict(embed_dims=192, num_layers=12, num_heads=3,
                 feedforward_channels=768),
    'small': dict(embed_dims=384, num_layers=12, num_heads=6,
                  feedforward_channels=1536),
    'base': dict(embed_dims=768, num_layers=12, num_heads=12,
                 feedforward_channels=3072),
    'large': dict(embed_dims=1024, num_layers=24, num_heads=16,
                  feedforward_channels=4096),
}
PATCH = 16
#: the paper recipes mask 75 of the 14 x 14 patches
MASK_RATIO = 75 / 196


@dataclass(frozen=True)
class Job:
    """One benchmarked job: its kind, both configs, its default image size
    and the scope its dataset builds the pipeline in."""
    kind: str  # pretrain | finetune | seg | backbone | pipeline
    ours: str = ''
    peer: str = ''
    img_size: int = 224
    version: int = 2
    data_scope: str = 'mmpretrain'


V1 = ('configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py',
      'mmpretrain::beit/beit_beit-base-p16_8xb256-amp-coslr-300e_in1k.py')
V2 = ('configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py',
      'mmpretrain::beitv2/beitv2_beit-base-p16_8xb256-amp-coslr-300e_in1k.py')
UPERNET = 'mmseg::beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py'
JOBS: Dict[str, Job] = {
    'pretrain-v1': Job('pretrain', *V1, version=1),
    'pretrain-v2': Job('pretrain', *V2),
    'finetune': Job(
        'finetune',
        'configs/finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k.py',
        'mmpretrain::beit/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py'),
    'upernet-512': Job(
        'seg', 'configs/seg/beit-base_upernet_8xb2-160k_ade20k-512x512.py',
        UPERNET, img_size=512, data_scope='mmseg'),
    'upernet-640': Job(
        'seg', 'configs/seg/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
        UPERNET, img_size=640, data_scope='mmseg'),
    # (the v2 recipe gives the default batch)
    'backbone': Job('backbone', V2[0]),
    'pipeline-v1': Job('pipeline', *V1, version=1),
    'pipeline-v2': Job('pipeline', *V2),
}
SIDES = ('ours', 'peer')
RANDOM_TOKENIZERS = ('tokenizers (VQ-KD, DALL-E) have random weights on both '
                     'sides: no checkpoint is downloaded')


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def int_list(text: str) -> List[int]:
    """``'224,384'`` -> ``[224, 384]``."""
    return [int(v) for v in text.split(',') if v]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--jobs', default=','.join(JOBS),
                        help=f'comma-separated, from {", ".join(JOBS)}')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'],
                        default='none',
                        help='optim wrapper of both sides: OptimWrapper, or '
                        'autocast (CUDA: AmpOptimWrapper; CPU: bfloat16 only)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the models\' forward (the loss; '
                        'data preprocessing and optimizer step stay eager)')
    parser.add_argument('--batch', type=int_list,
                        help='images per step, comma-separated list; default '
                        'the config\'s per-GPU batch')
    parser.add_argument('--img-size', type=int_list,
                        help='comma-separated list; default the job\'s (224, '
                        'seg 512 / 640)')
    parser.add_argument('--arch', choices=sorted(ARCHS),
                        help='override the architecture on both sides '
                        '(default: the configs\', ViT-B/16)')
    parser.add_argument('--steps', type=int,
                        help='timed steps per side, median (default 10, '
                        '--demo 3)')
    parser.add_argument('--warmup', type=int,
                        help='untimed rounds first (default 3, --demo 1)')
    parser.add_argument('--pipeline-images', type=int,
                        help='JPEG files per pipeline pass (default 64, '
                        '--demo 8)')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='top N operators of one profiled step per side')
    parser.add_argument('--json', metavar='OUT', help='write all figures')
    parser.add_argument('--demo', action='store_true',
                        help='mini arch, 64 px, batch 4 (seg 2), 3 steps: '
                        'runs on a 2-core CPU in about a minute')
    args = parser.parse_args(argv)
    args.jobs = [j for j in args.jobs.split(',') if j]
    unknown = sorted(set(args.jobs) - set(JOBS))
    if unknown:
        parser.error(f'unknown jobs {unknown}; choose from {list(JOBS)}')
    defaults = dict(steps=3, warmup=1, pipeline_images=8) if args.demo \
        else dict(steps=10, warmup=3, pipeline_images=64)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.demo:
        args.arch = args.arch or 'mini'
        args.img_size = args.img_size or [64]
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available')
    if args.device == 'cpu' and args.amp == 'fp16':
        parser.error('--amp fp16 needs CUDA (CPU autocast is bfloat16 only)')
    return args


# ---------------------------------------------------------------------------
# configs: load, then shape both sides alike
# ---------------------------------------------------------------------------
def load_config(path: str) -> Config:
    """Our config (a path under the repository) or an upstream one
    (``'mmpretrain::...'``, ``'mmseg::...'``, from the installed package)."""
    if '::' in path:
        package, rel = path.split('::')
        root = Path(importlib.import_module(package).__file__).parent
        return Config.fromfile(str(root / '.mim' / 'configs' / rel))
    return Config.fromfile(str(ROOT / path))


def arch_of(args: argparse.Namespace) -> Optional[Dict[str, int]]:
    return dict(ARCHS[args.arch]) if args.arch else None


def mask_settings(grid: int) -> Dict[str, int]:
    """The paper's blockwise-mask settings scaled to a ``grid x grid``
    patch grid (75 of 196 patches, blocks of at least 16).

    At most ``(grid - 1) ** 2`` patches: mmpretrain's ``BEiTMaskGenerator``
    never places a block on the last row or column (``randint(0, H - h)``)
    and loops forever on a count it cannot reach (e.g. 2 of 2 x 2).
    """
    count = max(1, min(round(grid * grid * MASK_RATIO), (grid - 1)**2))
    return dict(num_masking_patches=count,
                min_num_patches=max(1, min(16, count // 3)))


def set_pretrain_pipeline(pipeline: List[dict], version: int,
                          img_size: int) -> None:
    """Crop sizes and mask grid of a pretraining pipeline for ``img_size``
    (view 2: half size for DALL-E, v1; full size for VQ-KD, v2)."""
    grid = img_size // PATCH
    for step in pipeline:
        kind = step['type'].split('.')[-1]
        if kind == 'RandomResizedCropAndInterpolationWithTwoPic':
            step['size'] = img_size
            step['second_size'] = img_size // 2 if version == 1 else img_size
        elif kind == 'BlockwiseMaskGenerator':
            step.update(input_size=grid, **mask_settings(grid))
        elif kind == 'BEiTMaskGenerator':
            step.update(input_size=(grid, grid), **mask_settings(grid))
            if step.get('max_num_patches') is not None:
                step['max_num_patches'] = step['num_masking_patches']


def adapt_pretrain(cfg: Config, side: str, version: int, img_size: int,
                   arch: Optional[Dict[str, int]]) -> None:
    """Image size, architecture and random tokenizers of a pretraining
    config, ours (``BEiTPretrainer``) or mmpretrain's (``BEiT``)."""
    model = cfg.model
    model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    tok = model.target_generator
    tok.pop('init_cfg', None)
    model.backbone.img_size = img_size
    mini = arch is not None and arch['embed_dims'] < 192
    vocab = 1024 if mini else None
    if side == 'ours':
        # random weights, then frozen by hand (a frozen tokenizer refuses to
        # initialise without a checkpoint)
        tok.frozen = False
        if version == 2:
            tok.kmeans_init = False
            tok.encoder.img_size = img_size
    else:
        if version == 2:
            tok.quantize_kmeans_init = False
            tok.encoder_config.img_size = img_size
    if mini:
        if version == 2:
            encoder = tok.encoder if side == 'ours' else tok.encoder_config
            encoder.arch = dict(arch)
            tok.num_embed = vocab
        else:
            tok.update(n_hid=16, n_blk_per_group=1, vocab_size=vocab)
    if arch is not None:
        model.backbone.arch = dict(arch)
        dims, layers = arch['embed_dims'], arch['num_layers']
        early = layers - 3  # base: 9 of 12, large: 21 of 24
        if side == 'ours':
            model.head.in_channels = dims
            if version == 2:
                model.backbone.out_indices = (early - 1, -1)
                model.neck.update(
                    embed_dims=dims, num_heads=arch['num_heads'],
                    feedforward_channels=arch['feedforward_channels'],
                    early_layers=early, backbone_layers=layers)
        else:
            model.head.embed_dims = dims
            if version == 2:
                model.backbone.out_indices = [early - 1, -1]
                model.neck.update(backbone_arch=dict(arch, depth=layers),
                                  early_layers=early)
    if vocab is not None:
        model.head.num_embed = vocab
    set_pretrain_pipeline(cfg.train_dataloader.dataset.pipeline, version,
                          img_size)


def adapt_finetune(cfg: Config, side: str, img_size: int,
                   arch: Optional[Dict[str, int]]) -> None:
    """Image size and architecture of an ImageNet fine-tuning config; the
    backbone starts random (no pretrained checkpoint)."""
    model = cfg.model
    model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model.backbone.img_size = img_size
    model.backbone.pop('init_cfg', None)
    if arch is not None:
        model.backbone.arch = dict(arch)
        model.head.in_channels = arch['embed_dims']
    for step in cfg.train_dataloader.dataset.pipeline:
        if step['type'].split('.')[-1] == 'RandomResizedCrop':
            step['scale'] = img_size


def seg_out_indices(layers: int) -> Tuple[int, ...]:
    """The four blocks UperNet reads: base (3, 5, 7, 11), large
    (7, 11, 15, 23)."""
    return (layers // 3 - 1, layers // 2 - 1, 2 * layers // 3 - 1,
            layers - 1)


def adapt_seg(cfg: Config, side: str, img_size: int,
              arch: Optional[Dict[str, int]]) -> None:
    """Crop size and architecture of a UperNet config, ours (our BEiT) or
    mmseg's (its BEiT); the backbone starts random."""
    model = cfg.model
    size = (img_size, img_size)
    model.data_preprocessor.size = size
    model.pretrained = None
    backbone = model.backbone
    backbone.img_size = size
    backbone.pop('init_cfg', None)
    if arch is not None:
        dims, layers = arch['embed_dims'], arch['num_layers']
        if side == 'ours':
            backbone.arch = dict(arch)
        else:
            backbone.update(embed_dims=dims, num_layers=layers,
                            num_heads=arch['num_heads'],
                            mlp_ratio=arch['feedforward_channels'] // dims)
        backbone.out_indices = seg_out_indices(layers)
        model.neck.embed_dim = dims
        model.decode_head.update(in_channels=[dims] * 4, channels=dims)
        model.auxiliary_head.update(in_channels=dims,
                                    channels=min(256, dims))
        paramwise = cfg.optim_wrapper.get('paramwise_cfg') or {}
        if 'num_layers' in paramwise:
            paramwise['num_layers'] = layers
    for step in cfg.train_dataloader.dataset.pipeline:
        kind = step['type'].split('.')[-1]
        if kind == 'RandomResize':
            step['scale'] = (4 * img_size, img_size)
        elif kind == 'RandomCrop':
            step['crop_size'] = size


# ---------------------------------------------------------------------------
# synthetic data through each config's own pipeline
# ---------------------------------------------------------------------------
def _is_loading(step: dict) -> bool:
    kind = step['type'].split('.')[-1]
    return kind.endswith('LoadImageFromFile') or kind == 'LoadAnnotations'


def collate_fn(cfg: Config) -> Callable:
    """The collate function the Runner would build for the train loader."""
    from mmengine.registry import FUNCTIONS
    spec = dict(cfg.train_dataloader.get('collate_fn',
                                         dict(type='pseudo_collate')))
    kind = spec.pop('type')
    spec.pop('_scope_', None)
    if isinstance(kind, str):
        kind = FUNCTIONS.get(kind)
    return partial(kind, **spec)


def synthetic_batch(cfg: Config, job: Job, batch: int, img_size: int,
                    seed: int = 0) -> Any:
    """``batch`` random images (and labels / segmentation maps) through the
    config's train pipeline without its file loading, collated."""
    from mmengine.dataset import Compose
    rng = np.random.default_rng(seed)
    with DefaultScope.overwrite_default_scope(job.data_scope):
        pipeline = Compose([s for s in cfg.train_dataloader.dataset.pipeline
                            if not _is_loading(s)])
        collate = collate_fn(cfg)
    h, w = img_size, img_size * 4 // 3
    samples = []
    for i in range(batch):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        results = dict(img=img, img_shape=(h, w), ori_shape=(h, w),
                       img_path=f'synthetic_{i}.jpg', sample_idx=i)
        if job.kind == 'finetune':
            results['gt_label'] = int(rng.integers(0, 1000))
        if job.kind == 'seg':
            seg = rng.integers(0, 150, (h, w), dtype=np.uint8)
            results.update(gt_seg_map=seg, seg_fields=['gt_seg_map'],
                           reduce_zero_label=True,
                           seg_map_path=f'synthetic_{i}.png')
        samples.append(pipeline(results))
    return collate(samples)


# ---------------------------------------------------------------------------
# one side: model, optim wrapper, step
# ---------------------------------------------------------------------------
@dataclass
class Side:
    """What the timer needs of one side."""
    name: str
    model: torch.nn.Module
    step: Callable[[], Any]  # one training step
    persistent: Callable[[], int]  # bytes of parameters, buffers, states
    prepare: Callable[[], None] = lambda: None  # untimed, before each step
    #: one step run eagerly (what ``step`` runs, without ``--compile``)
    eager_step: Optional[Callable[[], Any]] = None


def optim_wrapper_cfg(cfg: Config, amp: str, device: str) -> dict:
    """The config's optim wrapper with its type set by ``--amp`` (the same
    for both sides; the config's constructor, optimizer, clipping and
    parameter-wise settings are kept)."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from beit_plugin.compat import BF16AmpOptimWrapper
    spec = copy.deepcopy(dict(cfg.optim_wrapper))
    for key in ('type', 'loss_scale', 'dtype'):
        spec.pop(key, None)
    if amp == 'none':
        spec['type'] = OptimWrapper
    elif device == 'cpu':
        spec['type'] = BF16AmpOptimWrapper
    else:
        spec.update(type=AmpOptimWrapper, loss_scale='dynamic',
                    dtype='float16' if amp == 'fp16' else 'bfloat16')
    return spec


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensor storages."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == 'meta':
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def model_and_optimizer_bytes(model: torch.nn.Module, optimizer=None) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values()
                           if isinstance(v, torch.Tensor))
    return tensor_bytes(tensors)


def build_side(cfg: Config, side: str, job: Job, args: argparse.Namespace,
               img_size: int, batch: int) -> Side:
    """Model and optim wrapper from ``cfg`` as MMEngine's Runner builds
    them (default scope, SyncBN reverted to BN without distribution)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    scope = cfg.get('default_scope')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
        model.init_weights()
        if side == 'ours' and job.kind == 'pretrain':
            model.target_generator.freeze()
        model = revert_sync_batchnorm(model).to(args.device)
        model.train()
        # (mmseg's constructor prints every parameter group)
        with contextlib.redirect_stdout(io.StringIO()):
            optim_wrapper = build_optim_wrapper(
                model, optim_wrapper_cfg(cfg, args.amp, args.device))
    data = synthetic_batch(cfg, job, batch, img_size)
    if args.compile:
        # the loss forward (MMEngine's `compile=True` compiles all of
        # train_step, whose optimizer step dynamo fails on with torch 2.14)
        model.forward = torch.compile(model.forward)
    train_step = model.train_step
    holder: Dict[str, Any] = {}

    def prepare() -> None:
        holder['data'] = copy.deepcopy(data)

    def step() -> Any:
        with DefaultScope.overwrite_default_scope(scope):
            return train_step(holder.pop('data'), optim_wrapper)

    def eager_step() -> Any:
        compiled = model.__dict__.pop('forward', None)
        try:
            return step()
        finally:
            if compiled is not None:
                model.forward = compiled

    label = type(model).__name__ + '/' + type(
        getattr(model, 'backbone', model)).__module__.split('.')[0]
    return Side(label, model, step,
                lambda: model_and_optimizer_bytes(
                    model, optim_wrapper.optimizer), prepare, eager_step)


def build_backbone_sides(args: argparse.Namespace, batch: int,
                         img_size: int) -> Dict[str, Side]:
    """The old backbone-only benchmark: our BEiT and mmpretrain's
    ``BEiTPretrainViT`` with the same architecture, batch and mask, masked
    forward + backward (no optimizer), as in pretraining (mask token, one
    shared relative position bias, layer scale)."""
    from mmpretrain.models.selfsup.beit import BEiTPretrainViT

    from beit_plugin.models.backbones import BEiT
    arch = arch_of(args) or dict(ARCHS['base'])
    common = dict(arch=arch, img_size=img_size, patch_size=PATCH,
                  layer_scale_init_value=0.1)
    torch.manual_seed(0)
    grid = img_size // PATCH
    images = torch.randn(batch, 3, img_size, img_size, device=args.device)
    mask = torch.rand(batch, grid, grid, device=args.device) < MASK_RATIO
    models = {
        'ours': BEiT(**common, use_mask_token=True,
                     use_shared_rel_pos_bias=True),
        'peer': BEiTPretrainViT(**common, use_shared_rel_pos_bias=True,
                                out_type='raw'),
    }
    sides = {}
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    for side, model in models.items():
        model.to(args.device).train()
        forward = torch.compile(model) if args.compile else model

        def step(model=model, forward=forward) -> None:
            with torch.autocast(args.device, dtype=dtype,
                                enabled=dtype is not None):
                out = forward(images, mask)[0]
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        sides[side] = Side(f'{type(model).__name__}/'
                           f'{type(model).__module__.split(".")[0]}',
                           model, step,
                           partial(model_and_optimizer_bytes, model),
                           eager_step=partial(step, model, model))
    return sides


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def time_steps(sides: Dict[str, Side], args: argparse.Namespace
               ) -> Dict[str, List[float]]:
    """Seconds of each of ``args.steps`` steps per side, the sides
    alternating, after ``args.warmup`` untimed rounds."""
    times: Dict[str, List[float]] = {name: [] for name in sides}
    for round_ in range(args.warmup + args.steps):
        for name, side in sides.items():
            side.prepare()
            synchronize(args.device)
            start = time.perf_counter()
            side.step()
            synchronize(args.device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def matmul_tflops(device: str, amp: str) -> Dict[str, Any]:
    """The device's rate on one large square matrix product in the steps'
    dtype (float32, or the ``--amp`` one), the yardstick of the steps'
    TFLOP/s: mean of 5 after 2 warm-ups."""
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(
        amp, torch.float32)
    n = 8192 if device == 'cuda' else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    synchronize(device)
    seconds = (time.perf_counter() - start) / 5
    return dict(n=n, dtype=str(dtype).split('.')[-1],
                tflops=2 * n**3 / seconds / 1e12)


def _status_kib(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_peak_bytes(side: Side, device: str) -> Optional[int]:
    """Peak memory of one step of ``side``: the high-water mark during the
    step above the level before it, plus the side's persistent tensors.
    None where the platform cannot tell (no ``/proc/self/clear_refs``)."""
    side.prepare()
    gc.collect()
    if device == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        side.step()
        torch.cuda.synchronize()
        transient = torch.cuda.max_memory_allocated() - before
    else:
        _malloc_trim()
        before = _status_kib('VmRSS')
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # reset VmHWM to the current RSS
        except OSError:
            return None
        side.step()
        peak = _status_kib('VmHWM')
        if before is None or peak is None:
            return None
        transient = (peak - before) * 1024
    return max(transient, 0) + side.persistent()


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args,
                             out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: the CPU's fused attention kernels, which ``torch.utils.flop_counter``
#: does not know: counted as it counts the CUDA ones (two products forward;
#: backward four, plus q k^T recomputed)
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _cpu_sdpa_backward_flops,
}


def step_flops(side: Side) -> Optional[int]:
    """FLOPs of one step of ``side`` (forward and backward), as
    ``torch.utils.flop_counter`` counts them: 2 per multiply-add executed
    by the matrix products, convolutions and attention kernels (what a
    kernel or a checkpointed block recomputes included), nothing for the
    elementwise ops or the optimizer. The step runs once, eagerly. None,
    with the reason on stderr, if the counter fails: the times and memory
    already measured are kept (a GPU run is rare)."""
    side.prepare()
    try:
        with FlopCounterMode(display=False,
                             custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            (side.eager_step or side.step)()
    except Exception as error:  # whatever the counter trips on
        print(f'!! {side.name}: FLOPs not counted: '
              f'{type(error).__name__}: {error}', file=sys.stderr)
        return None
    return counter.get_total_flops()


def profile_step(side: Side, device: str, top: int) -> List[Dict[str, Any]]:
    """The ``top`` operators of one step by self time (device time on
    CUDA): name, self ms, share of the step's total, calls."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if device == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    side.prepare()
    synchronize(device)
    with profile(activities=activities) as prof:
        side.step()
        synchronize(device)
    attr = 'self_device_time_total' if device == 'cuda' else \
        'self_cpu_time_total'
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [dict(op=e.key, self_ms=getattr(e, attr) / 1e3,
                 share=getattr(e, attr) / total, calls=e.count)
            for e in events[:top]]


def summarise(side: Side, seconds: List[float], batch: int,
              peak: Optional[int], flops: Optional[int]) -> Dict[str, Any]:
    """One side's figures; ``tflops`` is the rate its step achieves:
    counted FLOPs / median step time."""
    median = statistics.median(seconds)
    return dict(model=side.name, ms_per_step=median * 1e3,
                images_per_s=batch / median,
                ms_all=[round(s * 1e3, 3) for s in seconds],
                peak_mib=None if peak is None else peak / 2**20,
                gflop_per_step=None if flops is None else flops / 1e9,
                tflops=None if flops is None else flops / median / 1e12)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def share(rate: Optional[float], peak: float) -> Optional[float]:
    """``rate`` as a percentage of ``peak``."""
    value = ratio(rate, peak)
    return None if value is None else 100 * value


# ---------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------
def default_batch(job: Job, demo: bool = False) -> int:
    """The config's per-GPU batch (the backbone job: the v2 recipe's);
    ``--demo``: 4 (segmentation 2)."""
    if demo:
        return 2 if job.kind == 'seg' else 4
    return int(load_config(job.ours).train_dataloader.batch_size)


def job_configs(job: Job, args: argparse.Namespace,
                img_size: int) -> Dict[str, Config]:
    """Both sides' configs of a step job, shaped alike."""
    arch = arch_of(args)
    configs = {}
    for side in SIDES:
        cfg = load_config(getattr(job, side))
        if job.kind == 'pretrain':
            adapt_pretrain(cfg, side, job.version, img_size, arch)
        elif job.kind == 'finetune':
            adapt_finetune(cfg, side, img_size, arch)
        else:
            adapt_seg(cfg, side, img_size, arch)
        configs[side] = cfg
    return configs


def run_step_job(name: str, job: Job, args: argparse.Namespace,
                 img_size: int, batch: int) -> Dict[str, Any]:
    """Time, measure and (optionally) profile both sides of one job at
    ``img_size`` px and ``batch`` images."""
    if job.kind == 'backbone':
        sides = build_backbone_sides(args, batch, img_size)
    else:
        sides = {side: build_side(cfg, side, job, args, img_size, batch)
                 for side, cfg in job_configs(job, args, img_size).items()}
    times = time_steps(sides, args)
    row: Dict[str, Any] = dict(job=name, img_size=img_size, batch=batch)
    for side_name, side in sides.items():
        # the largest of two steps (a CPU's RSS moves in coarse steps)
        peaks = [step_peak_bytes(side, args.device) for _ in range(2)]
        peak = None if None in peaks else max(peaks)
        row[side_name] = summarise(side, times[side_name], batch, peak,
                                   step_flops(side))
        if args.profile:
            row[side_name]['profile'] = profile_step(side, args.device,
                                                     args.profile)
    row['ratio_ms'] = ratio(row['ours']['ms_per_step'],
                            row['peer']['ms_per_step'])
    row['ratio_mem'] = ratio(row['ours']['peak_mib'],
                             row['peer']['peak_mib'])
    row['ratio_flops'] = ratio(row['ours']['gflop_per_step'],
                               row['peer']['gflop_per_step'])
    del sides
    gc.collect()
    if args.device == 'cuda':
        torch.cuda.empty_cache()
    return row


def write_jpegs(folder: Path, count: int, seed: int = 0) -> List[str]:
    """``count`` ImageNet-sized (500 x 375) JPEG files with smooth random
    content (closer to photographs in decode cost than noise)."""
    import cv2
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(
            -12, 13, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        path = folder / f'img_{i:04d}.jpg'
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def run_pipeline_job(name: str, job: Job, args: argparse.Namespace,
                     img_size: int) -> Dict[str, Any]:
    """Images/s of the pretraining pipeline (load JPEG, colour jitter, flip,
    two views, blockwise mask, pack) of ours and the peer, in this one
    process (= one dataloader worker), passes alternating, median."""
    import cv2
    from mmengine.dataset import Compose
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)  # as MMEngine sets it for dataloader workers
    pipelines = {}
    for side in SIDES:
        cfg = load_config(getattr(job, side))
        pipeline = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
        set_pretrain_pipeline(pipeline, job.version, img_size)
        with DefaultScope.overwrite_default_scope(job.data_scope):
            pipelines[side] = Compose(pipeline)
    row: Dict[str, Any] = dict(job=name, img_size=img_size,
                               images=args.pipeline_images)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_jpegs(Path(tmp), args.pipeline_images)
            times: Dict[str, List[float]] = {s: [] for s in SIDES}
            for round_ in range(args.warmup + max(1, args.steps // 2)):
                for side, pipeline in pipelines.items():
                    start = time.perf_counter()
                    for i, path in enumerate(paths):
                        pipeline(dict(img_path=path, sample_idx=i))
                    if round_ >= args.warmup:
                        times[side].append(time.perf_counter() - start)
    finally:
        cv2.setNumThreads(threads)
    for side in SIDES:
        median = statistics.median(times[side])
        row[side] = dict(images_per_s=len(paths) / median,
                         ms_per_image=median / len(paths) * 1e3)
    row['ratio_ms'] = ratio(row['ours']['ms_per_image'],
                            row['peer']['ms_per_image'])
    return row


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def _sig(value: Optional[float]) -> str:
    """Three significant digits (FLOPs span the demo to ViT-L at 640)."""
    return '-' if value is None else f'{value:.3g}'


def markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown tables."""
    meta = report['meta']
    lines = [
        f"device {meta['device']} ({meta['device_name']}), torch "
        f"{meta['torch']}, amp {meta['amp']}, compile {meta['compile']}, "
        f"arch {meta['arch']}, threads {meta['threads']}, median of "
        f"{meta['steps']} steps after {meta['warmup']} warm-up rounds; "
        f"{RANDOM_TOKENIZERS}.", '']
    matmul = meta['matmul']
    rate = matmul['tflops']
    if report['steps']:
        lines += [
            '| job | img | batch | ours ms/step | peer ms/step | ours img/s '
            '| peer img/s | ours peak MiB | peer peak MiB | ms ours/peer '
            '| memory ours/peer |',
            '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
            '| ---: | ---: |']
        for r in report['steps']:
            o, p = r['ours'], r['peer']
            lines.append(
                f"| {r['job']} | {r['img_size']} | {r['batch']} | "
                f"{_fmt(o['ms_per_step'])} | {_fmt(p['ms_per_step'])} | "
                f"{_fmt(o['images_per_s'])} | {_fmt(p['images_per_s'])} | "
                f"{_fmt(o['peak_mib'], 0)} | {_fmt(p['peak_mib'], 0)} | "
                f"{_fmt(r['ratio_ms'], 2)} | {_fmt(r['ratio_mem'], 2)} |")
        lines.append('')
        lines += [
            f"FLOPs counted by torch.utils.flop_counter; the yardstick: a "
            f"{matmul['n']}^3 {matmul['dtype']} matrix product, "
            f"{_sig(rate)} TFLOP/s.", '',
            '| job | img | batch | ours GFLOP/step | peer GFLOP/step | FLOP '
            'ours/peer | ours TFLOP/s | peer TFLOP/s | ours % of matmul | '
            'peer % of matmul |',
            '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
            '| ---: |']
        for r in report['steps']:
            o, p = r['ours'], r['peer']
            lines.append(
                f"| {r['job']} | {r['img_size']} | {r['batch']} | "
                f"{_sig(o['gflop_per_step'])} | {_sig(p['gflop_per_step'])} "
                f"| {_fmt(r['ratio_flops'], 2)} | {_sig(o['tflops'])} | "
                f"{_sig(p['tflops'])} | {_fmt(share(o['tflops'], rate))} | "
                f"{_fmt(share(p['tflops'], rate))} |")
        lines.append('')
    if report['pipelines']:
        lines += [
            '| pipeline (per worker) | img | ours img/s | peer img/s | '
            'ms ours/peer |', '| --- | ---: | ---: | ---: | ---: |']
        for r in report['pipelines']:
            lines.append(
                f"| {r['job']} | {r['img_size']} | "
                f"{_fmt(r['ours']['images_per_s'])} | "
                f"{_fmt(r['peer']['images_per_s'])} | "
                f"{_fmt(r['ratio_ms'], 2)} |")
        lines.append('')
    for r in report['feeding']:
        lines.append(
            f"{r['job']} at {r['img_size']} px, batch {r['batch']}: the step "
            f"takes {r['step_images_per_s']:.1f} img/s, one pipeline worker "
            f"gives {r['worker_images_per_s']:.1f}: workers per device "
            f"needed to keep up: {r['workers_needed']}.")
    if report['feeding']:
        lines.append('')
    for r in report['steps']:
        for side in SIDES:
            ops = r[side].get('profile')
            if not ops:
                continue
            lines += [f"Top operators, {r['job']} {r['img_size']} px batch "
                      f"{r['batch']}, {side} ({r[side]['model']}):", '',
                      '| op | self ms | share | calls |',
                      '| --- | ---: | ---: | ---: |']
            lines += [f"| `{op['op']}` | {op['self_ms']:.2f} | "
                      f"{op['share'] * 100:.1f}% | {op['calls']} |"
                      for op in ops]
            lines.append('')
    return '\n'.join(lines)


def feeding(steps: List[Dict], pipelines: List[Dict]) -> List[Dict]:
    """For each pretraining step row with a pipeline row of the same
    version and size: how many workers feed our step."""
    out = []
    for s in steps:
        if not s['job'].startswith('pretrain-'):
            continue
        for p in pipelines:
            if p['job'] == 'pipeline-' + s['job'].split('-')[1] and \
                    p['img_size'] == s['img_size']:
                need = s['ours']['images_per_s']
                worker = p['ours']['images_per_s']
                out.append(dict(job=s['job'], img_size=s['img_size'],
                                batch=s['batch'], step_images_per_s=need,
                                worker_images_per_s=worker,
                                workers_needed=math.ceil(need / worker)))
    return out


def save(report: Dict[str, Any], path: Optional[str]) -> None:
    """Write ``report`` as JSON to ``path`` (if any)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1))


def run_jobs(args: argparse.Namespace, report: Dict[str, Any]) -> None:
    """Every job x image size (x batch) the command line names, into
    ``report``; one progress line each (stderr), and the JSON rewritten
    after each (a run cut short keeps what it measured)."""
    for name in args.jobs:
        job = JOBS[name]
        for size in args.img_size or [job.img_size]:
            if job.kind == 'pipeline':
                row = run_pipeline_job(name, job, args, size)
                report['pipelines'].append(row)
                print(f"{name} {size}px: ours "
                      f"{row['ours']['images_per_s']:.1f} img/s, peer "
                      f"{row['peer']['images_per_s']:.1f} img/s",
                      file=sys.stderr, flush=True)
                save(report, args.json)
                continue
            for batch in args.batch or [default_batch(job, args.demo)]:
                row = run_step_job(name, job, args, size, batch)
                report['steps'].append(row)
                print(f"{name} {size}px batch {batch}: ours "
                      f"{row['ours']['ms_per_step']:.1f} ms, peer "
                      f"{row['peer']['ms_per_step']:.1f} ms",
                      file=sys.stderr, flush=True)
                save(report, args.json)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark the command line asks for; print the Markdown
    tables, write the JSON; return the report."""
    args = parse_args(argv)
    if args.compile:
        # recompilations (each side's guards, lazily set attributes) happen
        # in the first rounds
        args.warmup = max(args.warmup, 3)
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' \
        else (os.uname().machine + ' CPU')
    report: Dict[str, Any] = dict(
        meta=dict(device=args.device, device_name=device_name,
                  torch=torch.__version__, amp=args.amp,
                  compile=args.compile, arch=args.arch or 'configs',
                  threads=torch.get_num_threads(), steps=args.steps,
                  warmup=args.warmup, argv=list(argv if argv is not None
                                                else sys.argv[1:]),
                  note=RANDOM_TOKENIZERS,
                  matmul=matmul_tflops(args.device, args.amp)),
        steps=[], pipelines=[], feeding=[])
    # no per-parameter lines from the optim wrapper constructors
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        run_jobs(args, report)
    finally:
        logger.setLevel(level)
    report['feeding'] = feeding(report['steps'], report['pipelines'])
    print(markdown(report))
    save(report, args.json)
    return report


if __name__ == '__main__':
    main()
