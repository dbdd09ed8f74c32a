"""The interface every image tokenizer (target generator) shares.

A BEiT pretraining model holds one tokenizer, frozen, and asks it for the
token ids of the second view; VQ-KD, the trainable dVAE and the DALL-E
encoder all answer the same calls, so a config swaps one for another by
changing the tokenizer dict alone.
"""
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.model import BaseModel
from mmengine.runner.checkpoint import (_load_checkpoint,
                                        _load_checkpoint_with_prefix)

Norm = Dict[str, Tuple[float, ...]]

# ``(pixel - 127.5) / 127.5``: RGB in [-1, 1], the official VQ-KD input.
SYMMETRIC_NORM: Norm = dict(mean=(127.5, ) * 3, std=(127.5, ) * 3)


class Tokenizer(BaseModel):
    """Base class of the image tokenizers.

    Subclasses set ``vocab_size`` and ``downsample`` and implement
    :meth:`get_codebook_indices`; trainable ones implement :meth:`loss`.

    Attributes:
        vocab_size (int): number of token ids.
        downsample (int): input pixels per token side; an
            ``(H * downsample, W * downsample)`` input gives ``N = H * W``
            tokens.
        input_norm (dict): ``mean`` and ``std`` (RGB, 0-255 pixel units) the
            inputs must be normalised with, ``(pixel - mean) / std``; the
            data preprocessor of a pretraining model reads it to prepare the
            tokenizer's view.
        frozen (bool): whether :meth:`freeze` was called.

    Args:
        input_norm (dict): see above.
        frozen (bool): call :meth:`freeze` once built (a target generator).
            Defaults to False.
        data_preprocessor (dict, optional): for training the tokenizer
            itself; defaults to MMEngine's ``ImgDataPreprocessor`` with
            ``input_norm`` and BGR to RGB conversion.
        init_cfg (dict, optional): MMEngine initialisation config.
    """
    vocab_size: int
    downsample: int

    def __init__(self,
                 input_norm: Norm,
                 frozen: bool = False,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        norm = dict(mean=tuple(float(v) for v in input_norm['mean']),
                    std=tuple(float(v) for v in input_norm['std']))
        if data_preprocessor is None:
            data_preprocessor = dict(
                type='ImgDataPreprocessor',
                mean=norm['mean'],
                std=norm['std'],
                bgr_to_rgb=True)
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.input_norm = norm
        self.frozen = False
        self._freeze_when_built = frozen

    def _built(self) -> None:
        """Subclasses call this at the end of ``__init__``."""
        if self._freeze_when_built:
            self.freeze()

    def freeze(self) -> 'Tokenizer':
        """Stop all learning: no gradients, eval mode from now on (also
        after ``train()``), so no EMA or k-means state changes."""
        self.frozen = True
        for param in self.parameters():
            param.requires_grad = False
        return self.train(False)

    def train(self, mode: bool = True) -> 'Tokenizer':
        """Set training mode; a frozen tokenizer stays in eval mode."""
        return super().train(mode and not self.frozen)

    def init_weights(self) -> None:
        """Initialise as MMEngine does, except when frozen.

        A frozen tokenizer is a target generator: with random or partly
        loaded weights it gives random targets and the pretraining learns
        nothing, with no error. So it must have a ``Pretrained`` ``init_cfg``,
        and its checkpoint loads strictly: every tensor of the tokenizer
        present, nothing else under it (after the subclass's key adaptation,
        e.g. official VQ-KD statistics), and :meth:`check_initialised` holds.

        Raises:
            ValueError: no ``Pretrained`` ``init_cfg``, a checkpoint that is
                not of this tokenizer, or an uninitialised state in it.
        """
        if not self.frozen:
            super().init_weights()
            return
        name = type(self).__name__
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            raise ValueError(
                f'{name} is a frozen target generator without weights '
                f'(init_cfg={cfg!r}): its targets would be random. Give it '
                "init_cfg=dict(type='Pretrained', checkpoint=<a checkpoint "
                'of this tokenizer>).')
        checkpoint = cfg['checkpoint']
        if cfg.get('prefix'):
            state = _load_checkpoint_with_prefix(cfg['prefix'], checkpoint,
                                                 map_location='cpu')
        else:
            state = _load_checkpoint(checkpoint, map_location='cpu')
            state = state.get('state_dict', state)
        state = {k[len('module.'):] if k.startswith('module.') else k: v
                 for k, v in state.items()}
        incompatible = self.load_state_dict(state, strict=False)
        problems = [
            f'{label} {keys[:5]}{" ..." if len(keys) > 5 else ""} '
            f'({len(keys)} in all)'
            for label, keys in (('missing', incompatible.missing_keys),
                                ('unexpected', incompatible.unexpected_keys))
            if keys
        ]
        if problems:
            raise ValueError(
                f'{checkpoint} is not a checkpoint of this {name} (the frozen '
                f'target generator loads strictly): {"; ".join(problems)}. '
                'Check the tokenizer config (size, num_embed, embed_dims) '
                'against the checkpoint, or convert a foreign one with '
                'tools/convert_checkpoint.py.')
        self.check_initialised(checkpoint)
        self._is_init = True

    def check_initialised(self, checkpoint: str) -> None:
        """Raise ``ValueError`` if the weights loaded from ``checkpoint``
        hold a state that was never trained (e.g. a codebook that k-means
        never initialised); subclasses with such state override this."""

    def get_codebook_indices(self, img: torch.Tensor) -> torch.Tensor:
        """Token ids of images.

        Args:
            img: ``(B, 3, H * downsample, W * downsample)``, normalised with
                ``input_norm``.

        Returns:
            ``(B, N)`` long ids in ``[0, vocab_size)``, ``N = H * W``
            row-major.
        """
        raise NotImplementedError

    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training losses of a batch ``(B, 3, H_img, W_img)``."""
        raise NotImplementedError(
            f'{type(self).__name__} is an inference-only tokenizer')

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List] = None,
                mode: str = 'tensor'):
        """MMEngine entry point.

        Args:
            inputs: ``(B, 3, H_img, W_img)`` normalised images.
            data_samples: unused (tokenizers learn without labels).
            mode: ``'loss'`` returns the dict of losses, ``'tensor'`` the
                ``(B, N)`` token ids.
        """
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'tensor':
            return self.get_codebook_indices(inputs)
        raise ValueError(f'{type(self).__name__} supports the modes '
                         f"'loss' and 'tensor', not {mode!r}")

