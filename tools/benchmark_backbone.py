"""Time our BEiT backbone against mmpretrain's on the same pretraining step.

Forward + backward of the masked backbone (mask token, shared relative
position bias, layer scale), same architecture, batch and mask for both, in the
same process, the two models' steps interleaved so that load from other
processes hits both alike. Prints the median ms/step of each and their ratio
(on CUDA also peak memory). ``--demo`` is a small, fast setting for the quick
start.

    python tools/benchmark_backbone.py --arch base --img-size 224 --batch 8
"""
import argparse
import statistics
import time
from typing import Callable, Dict

import torch

import beit_plugin  # noqa: F401  (compat fixes, registries)
from beit_plugin.models.backbones import BEiT


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='base')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--patch-size', type=int, default=16)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--demo', action='store_true',
                        help='small model and images: runs in seconds')
    args = parser.parse_args()
    if args.demo:
        args.arch, args.img_size, args.patch_size, args.batch = \
            'small', 64, 8, 8
    return args


def build_models(args: argparse.Namespace) -> Dict[str, torch.nn.Module]:
    from mmpretrain.models.backbones.beit import BEiTViT  # noqa: F401
    from mmpretrain.models.selfsup.beit import BEiTPretrainViT
    common = dict(arch=args.arch, img_size=args.img_size,
                  patch_size=args.patch_size, layer_scale_init_value=0.1)
    ours = BEiT(**common, use_mask_token=True, use_shared_rel_pos_bias=True)
    theirs = BEiTPretrainViT(**common, use_shared_rel_pos_bias=True,
                             out_type='raw')
    return {'beit_plugin.BEiT': ours, 'mmpretrain.BEiTPretrainViT': theirs}


def time_steps(steps: Dict[str, Callable[[], None]],
               args: argparse.Namespace) -> Dict[str, float]:
    """Median seconds per call of each step, calls interleaved, after
    ``args.warmup`` untimed rounds."""
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else \
        (lambda: None)
    times = {name: [] for name in steps}
    for round_ in range(args.warmup + args.steps):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    grid = args.img_size // args.patch_size
    images = torch.randn(args.batch, 3, args.img_size, args.img_size,
                         device=args.device)
    mask = torch.rand(args.batch, grid, grid, device=args.device) < 0.4
    models = build_models(args)
    steps, memory = {}, {}
    for name, model in models.items():
        model.to(args.device).train()

        def step(model=model):
            out = model(images, mask)[0]
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        steps[name] = step
        if args.device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
            step()
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
    seconds = time_steps(steps, args)
    for name in models:
        extra = f', peak {memory[name]:.0f} MiB' if memory else ''
        print(f'{name:28s} {seconds[name] * 1e3:9.1f} ms/step{extra}')
    (ours, theirs), names = seconds.values(), list(models)
    print(f'arch={args.arch} img={args.img_size} patch={args.patch_size} '
          f'batch={args.batch} device={args.device} '
          f'threads={torch.get_num_threads()}')
    ratio = f', memory ratio {memory[names[0]] / memory[names[1]]:.2f}' \
        if memory else ''
    print(f'speed-up vs mmpretrain: {theirs / ours:.2f}x{ratio}')


if __name__ == '__main__':
    main()
