"""Keep the tokenizer weights of a stage-one training checkpoint.

A checkpoint written by ``tools/train.py`` holds the optimizer, the message
hub and the model; a pretraining config only needs the model's state dict
(VQ-KD's encoder, projection and codebook with its EMA state; or the dVAE).
``--encoder-only`` also drops the decoder, which target generation never
runs. The file is written with plain tensors only, so it loads with
``torch.load(weights_only=True)``.

Example::

    python tools/export_tokenizer.py work_dirs/vqkd_demo_hog/iter_2000.pth \\
        checkpoints/vqkd_demo_hog.pth --encoder-only
"""
import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from beit_plugin.checkpoint_loading import safe_torch_load

DECODER_PREFIXES = ('decoder.', 'decode_task_layer.')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Save the tokenizer weights of a training checkpoint')
    parser.add_argument('src', help='checkpoint written by tools/train.py')
    parser.add_argument('dst', help='file to write')
    parser.add_argument(
        '--encoder-only',
        action='store_true',
        help='drop the decoder (decoder.*, decode_task_layer.*)')
    return parser.parse_args(argv)


def tokenizer_state_dict(checkpoint: Dict,
                         encoder_only: bool = False,
                         source: str = '<checkpoint>'
                         ) -> Dict[str, torch.Tensor]:
    """The model weights of a runner checkpoint, decoder optionally dropped.

    Raises:
        KeyError: ``checkpoint`` has no ``state_dict`` (names ``source``).
    """
    if 'state_dict' not in checkpoint:
        raise KeyError(f'{source}: no "state_dict" key (found '
                       f'{sorted(checkpoint)[:8]}); expected a checkpoint '
                       'written by tools/train.py')
    state = checkpoint['state_dict']
    if encoder_only:
        state = {k: v for k, v in state.items()
                 if not k.startswith(DECODER_PREFIXES)}
    return {k: v.detach().clone() for k, v in state.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    checkpoint = safe_torch_load(args.src, map_location='cpu')
    state = tokenizer_state_dict(checkpoint, args.encoder_only, args.src)
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': state}, args.dst)
    numel = sum(v.numel() for v in state.values())
    print(f'{args.dst}: {len(state)} tensors, {numel:,} values')


if __name__ == '__main__':
    main()
