"""Which attention kernel is fastest for BEiT's attention with a learned
relative position bias, forward and backward, and is it correct?

BEiT adds a ``(heads, 1+N, 1+N)`` bias that needs a gradient to the
attention logits. ``F.scaled_dot_product_attention`` takes it as a float
``attn_mask``; which kernel then runs depends on the device and the kernels
that accept a mask with a gradient. This tool times each candidate on the
same inputs (forward + backward, median of ``--steps`` after warm-up) and
compares its output and gradients with a float64 explicit product:

- ``explicit``: ``softmax(q k^T * scale + bias) v`` (our CPU training path)
- ``sdpa``: ``F.scaled_dot_product_attention``, the kernel PyTorch picks
- ``sdpa-math`` / ``sdpa-efficient`` / ``sdpa-cudnn``: one backend forced
  (``torch.nn.attention.sdpa_kernel``); a backend that refuses the inputs
  is reported as such
- ``flex``: ``torch.nn.attention.flex_attention`` under ``torch.compile``
  with the bias as a ``score_mod`` (``--no-flex`` to skip: compiling takes
  a while)

    python tools/benchmark_attention.py                       # demo shapes
    python tools/benchmark_attention.py --device cuda --dtype bfloat16 \\
        --batch 64 --heads 12 --tokens 197 --head-dims 64 --json attn.json
"""
import argparse
import json
import statistics
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  torch.Tensor]


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, D)`` q, k, v and ``(1, H, L, L)`` bias -> ``(B, H, L,
    D)``."""
    logits = (q * q.shape[-1]**-0.5) @ k.transpose(-2, -1) + bias
    return logits.float().softmax(-1).to(v.dtype) @ v


def sdpa(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def forced(backend_name: str) -> Kernel:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)

    def kernel(q, k, v, bias):
        with sdpa_kernel([backend]):
            return sdpa(q, k, v, bias)
    return kernel


def flex() -> Kernel:
    from torch.nn.attention.flex_attention import flex_attention
    compiled = torch.compile(flex_attention)

    def kernel(q, k, v, bias):
        table = bias[0]

        def add_bias(score, b, h, q_idx, kv_idx):
            return score + table[h, q_idx, kv_idx]
        return compiled(q, k, v, score_mod=add_bias)
    return kernel


def time_kernel(kernel: Kernel, inputs, steps: int, warmup: int,
                device: str) -> float:
    """Median ms of forward + backward."""
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        out = kernel(*inputs)
        out.backward(torch.ones_like(out))
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
        for t in inputs:
            t.grad = None
    return statistics.median(times)


def errors(kernel: Kernel, inputs, reference) -> Dict[str, float]:
    """Largest absolute differences of the output and of the q, k, v and
    bias gradients from the float64 reference."""
    for t in inputs:
        t.grad = None
    out = kernel(*inputs)
    out.backward(torch.ones_like(out))
    got = [out] + [t.grad for t in inputs]
    names = ['out', 'dq', 'dk', 'dv', 'dbias']
    return {n: (r if g is None else g.double() - r).abs().max().item()
            for n, g, r in zip(names, got, reference)}


def main(argv: Optional[list] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default='float32',
                        choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--heads', type=int, default=6)
    parser.add_argument('--tokens', type=int, default=65,
                        help='1 + patches (65: the demo, 197: 224 px / 16)')
    parser.add_argument('--head-dims', type=int, default=32)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--no-flex', action='store_true')
    parser.add_argument('--json', help='write the figures here')
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.tokens, args.head_dims)
    base = [torch.randn(shape, dtype=torch.float64) for _ in range(3)]
    base.append(torch.randn(1, args.heads, args.tokens, args.tokens,
                            dtype=torch.float64))
    reference_inputs = [t.clone().requires_grad_() for t in base]
    out = explicit(*reference_inputs)
    out.backward(torch.ones_like(out))
    reference = [out.detach()] + [t.grad for t in reference_inputs]
    reference = [r.to(args.device) for r in reference]
    inputs = [t.to(args.device, dtype).requires_grad_() for t in base]

    kernels: Dict[str, Callable[[], Kernel]] = {
        'explicit': lambda: explicit, 'sdpa': lambda: sdpa,
        'sdpa-math': lambda: forced('MATH'),
        'sdpa-efficient': lambda: forced('EFFICIENT_ATTENTION')}
    if args.device == 'cuda':
        kernels['sdpa-cudnn'] = lambda: forced('CUDNN_ATTENTION')
    if not args.no_flex:
        kernels['flex'] = flex
    results = {}
    for name, make in kernels.items():
        try:
            kernel = make()
            ms = time_kernel(kernel, inputs, args.steps, args.warmup,
                             args.device)
            results[name] = dict(ms=ms, **errors(kernel, inputs, reference))
        except Exception as exc:  # a backend refusing these inputs
            results[name] = dict(error=f'{type(exc).__name__}: '
                                 f'{str(exc).splitlines()[0][:160]}')
    device = torch.cuda.get_device_name() if args.device == 'cuda' else \
        'CPU'
    print(f'attention forward + backward, {device}, torch '
          f'{torch.__version__}, {args.dtype}, q/k/v {shape}, bias (1, '
          f'{args.heads}, {args.tokens}, {args.tokens}) with a gradient; '
          f'median of {args.steps} after {args.warmup} warm-ups; errors: '
          'largest absolute difference from a float64 explicit product\n')
    print('| kernel | ms | out | dq | dk | dv | dbias |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for name, r in results.items():
        if 'error' in r:
            print(f'| {name} | refused: {r["error"]} | | | | | |')
            continue
        errs = ' | '.join(f'{r[k]:.1e}'
                          for k in ('out', 'dq', 'dk', 'dv', 'dbias'))
        print(f'| {name} | {r["ms"]:.2f} | {errs} |')
    report = dict(device=device, torch=torch.__version__, dtype=args.dtype,
                  shape=list(shape), results=results)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
