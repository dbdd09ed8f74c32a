"""Export our BEiT backbone as a transformers ``BeitModel`` directory.

CKPT is a checkpoint in our layout: what tools/train.py or
tools/convert_checkpoint.py write (``backbone.*``; BEiT v2 pretraining's
final norm, ``neck.norm``, is taken as the backbone's), or a bare backbone
state dict. The architecture is read off the weights. OUT_DIR receives
``config.json`` and ``model.safetensors`` (transformers is not needed to
write them); ``BeitModel.from_pretrained(OUT_DIR)`` then gives the
backbone's outputs: ``last_hidden_state`` is our raw ``(B, 1+N, C)``
output, ``pooler_output`` the CLS token (final norm) or the normed patch
mean (``fc_norm``).

Example::

    python tools/export_hf.py checkpoints/beitv2-base_pt1k.pth \\
        exported/beitv2-base
"""
import argparse
from typing import Optional, Sequence

from beit_plugin.checkpoint_loading import UnsafeCheckpointError
from beit_plugin.convert import (backbone_kwargs, backbone_only, export_hf,
                                 read_weights, unwrap, validate_state_dict)
from beit_plugin.models.backbones import BEiT


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Write our BEiT backbone as a transformers BeitModel')
    parser.add_argument('ckpt', help='checkpoint in our layout')
    parser.add_argument('out_dir', help='directory to write')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='attention heads, for backbones without '
                        'relative position tables (default: width // 64)')
    parser.add_argument('--norm-eps', type=float, default=1e-6,
                        help='LayerNorm epsilon the backbone was trained with '
                        '(default: 1e-6, as our configs and the official '
                        'models)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        state = unwrap(read_weights(args.ckpt))
        if any(k.startswith('backbone.') for k in state):
            state = backbone_only(state)
        model = BEiT(**backbone_kwargs(state, args.num_heads),
                     norm_eps=args.norm_eps)
        validate_state_dict(state, model, what=args.ckpt)
        model.load_state_dict(state)
        export_hf(model, args.out_dir)
    except (ValueError, FileNotFoundError, UnsafeCheckpointError) as err:
        raise SystemExit(f'export_hf: {err}')
    arch = model.arch_settings
    print(f'{args.out_dir}: transformers BeitModel, {arch["num_layers"]} '
          f'layers of {arch["embed_dims"]} channels, {arch["num_heads"]} '
          f'heads, {model.patch_grid[0] * model.patch_size} px / '
          f'{model.patch_size}, from {args.ckpt}')


if __name__ == '__main__':
    main()
