"""Convert a BEiT, VQ-KD or DALL-E checkpoint of another code base to ours.

SRC is read without running code from it (safetensors, or ``torch.load``
with ``weights_only=True``; a transformers model directory is read through
its ``model.safetensors`` / ``pytorch_model.bin``). The result is validated
against a model whose shapes are read off the weights (every missing,
unexpected or mis-shaped key is listed) and written to DST as
``{'state_dict': ...}`` of plain tensors:

- ``--model beit``: ``backbone.*`` (plus the pretraining or classification
  head, the v2 patch aggregation, MMSegmentation's decode heads, when the
  file has them; ``--backbone-only`` keeps ``backbone.*`` only), as our
  configs load it with ``init_cfg=dict(type='Pretrained', checkpoint=DST,
  prefix='backbone.')``;
- ``--model vqkd`` / ``dalle``: the tokenizer's keys, for the tokenizer's
  ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.

Examples::

    python tools/convert_checkpoint.py \\
        beitv2_base_patch16_224_pt1k.pth checkpoints/beitv2-base_pt1k.pth \\
        --from unilm
    python tools/convert_checkpoint.py beit-base-patch16-224-pt22k/ \\
        checkpoints/beit-base_pt22k.pth --from hf
    python tools/convert_checkpoint.py \\
        vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth \\
        checkpoints/vqkd_clip.pth --from unilm --model vqkd
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from beit_plugin.checkpoint_loading import (TruncatedCheckpointError,
                                            UnsafeCheckpointError)
from beit_plugin.convert import (SOURCES, StateDict, backbone_only,
                                 beit_target, convert_state_dict,
                                 dalle_target, read_weights,
                                 validate_state_dict, vqkd_target,
                                 with_prefix)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert a foreign BEiT / VQ-KD / DALL-E checkpoint')
    parser.add_argument('src', help='checkpoint file or transformers '
                        'model directory')
    parser.add_argument('dst', help='.pth file to write')
    parser.add_argument('--from', dest='source', required=True,
                        choices=SOURCES, help='code base SRC comes from')
    parser.add_argument('--model', default='beit',
                        choices=('beit', 'vqkd', 'dalle'),
                        help='what SRC holds (default: beit)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='beit: write backbone.* only')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='attention heads, for checkpoints without '
                        'relative position tables (default: width // 64)')
    return parser.parse_args(argv)


def convert(state_dict: dict, args: argparse.Namespace
            ) -> Tuple[StateDict, nn.Module, int]:
    """Convert and validate: the state dict to write, the model it was
    validated against and the number of tensors not validated (modules that
    are not ours, kept as they are: MMSegmentation's decode heads, an
    MMPretrain pretraining's tokenizer)."""
    if args.model == 'vqkd':
        converted = convert_state_dict(state_dict, args.source, 'vqkd')
        target = vqkd_target(converted, args.num_heads)
    elif args.model == 'dalle':
        converted = convert_state_dict(state_dict, args.source, 'dalle')
        target = dalle_target(converted)
    else:
        converted = convert_state_dict(state_dict, args.source, 'beit',
                                       layout='model')
        target = beit_target(converted, args.num_heads)
    checked = {k: v for k, v in converted.items()
               if args.model != 'beit' or k.split('.')[0] in target}
    validate_state_dict(checked, target, what=args.src)
    if args.model == 'beit' and args.backbone_only:
        return with_prefix(backbone_only(converted), 'backbone.'), target, 0
    return converted, target, len(converted) - len(checked)


def describe_target(target: nn.Module) -> str:
    """E.g. ``BEiT (12 layers x 768, 12 heads, 224 px / 16) + head``."""
    if not isinstance(target, nn.ModuleDict):
        return type(target).__name__
    backbone = target['backbone']
    arch = backbone.arch_settings
    return (f'BEiT ({arch["num_layers"]} layers x {arch["embed_dims"]}, '
            f'{arch["num_heads"]} heads, '
            f'{backbone.patch_grid[0] * backbone.patch_size} px / '
            f'{backbone.patch_size})') + ''.join(
                f' + {part}' for part in target if part != 'backbone')


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        state, target, unchecked = convert(read_weights(args.src), args)
    except (ValueError, FileNotFoundError, UnsafeCheckpointError,
            TruncatedCheckpointError) as err:
        raise SystemExit(f'convert_checkpoint: {err}')
    state = {k: v.detach().contiguous() for k, v in state.items()}
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': state}, args.dst)
    numel = sum(v.numel() for v in state.values())
    extra = f', {unchecked} more kept as they are' if unchecked else ''
    print(f'{args.dst}: {len(state)} tensors, {numel:,} values, from '
          f'{args.src} ({args.source}); validated against '
          f'{describe_target(target)}{extra}')


if __name__ == '__main__':
    main()
