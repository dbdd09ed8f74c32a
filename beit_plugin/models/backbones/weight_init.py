"""The official BEiT initialisations, one per official model class.

``'modeling_pretrain'``: ``VisionTransformerForMaskedImageModeling`` of
unilm ``beit/modeling_pretrain.py`` and ``beit2/modeling_pretrain.py``
(``__init__``, ``_init_weights``). Its ``trunc_normal_`` truncates at one
standard deviation (``a=-std, b=std``), so the weights have an effective std
of about ``0.54 * 0.02 = 0.0108`` and ``|w| <= 0.02``. It initialises every
Linear *and* Conv2d weight (the patch embedding too), the CLS and mask
tokens, the position embedding and the MIM head (``lm_head``), with zero
biases.

``'modeling_finetune'``: ``VisionTransformer`` of ``modeling_finetune.py``,
the model that classification builds, and VQ-KD's encoder and decoder too
(``beit2/modeling_vqkd.py``). timm's ``trunc_normal_(std=.02)`` keeps its
default bounds +-2, 100 standard deviations away: an untruncated normal of
std 0.02 for Linear weights, the CLS token and the position embedding, with
zero Linear biases. The patch-embedding conv keeps PyTorch's default
(``_init_weights`` skips Conv2d). The official segmentation backbone
(``semantic_segmentation/backbone/beit.py``) initialises the same way.

Both give LayerNorms unit weight and zero bias, leave relative position
tables and q/v biases at zero, and divide the output projections
(``attn.proj``, ``mlp.fc2``) of the block at depth ``l`` (1-based) by
``sqrt(2 l)`` (``fix_init_weight``).
"""
import math
from typing import Iterable

import torch
from mmengine.model.weight_init import trunc_normal_
from torch import nn

#: The official ``init_std``.
INIT_STD = .02
PRETRAIN = 'modeling_pretrain'
FINETUNE = 'modeling_finetune'
INIT_MODES = (PRETRAIN, FINETUNE)


def check_init_mode(mode: str) -> str:
    """``mode`` itself if it is one of :data:`INIT_MODES`.

    Raises:
        ValueError: naming the modes otherwise.
    """
    if mode not in INIT_MODES:
        raise ValueError(f'init_mode {mode!r} is not one of {INIT_MODES}')
    return mode


def trunc_normal_init_(tensor: torch.Tensor, mode: str) -> torch.Tensor:
    """Fill ``tensor`` (any shape) in place with the official truncated
    normal of ``mode``: std 0.02 cut at +-0.02 for ``'modeling_pretrain'``,
    at +-2 (timm's and MMEngine's default) for ``'modeling_finetune'``."""
    if check_init_mode(mode) == PRETRAIN:
        return trunc_normal_(tensor, std=INIT_STD, a=-INIT_STD, b=INIT_STD)
    return trunc_normal_(tensor, std=INIT_STD)


def init_module_(module: nn.Module, mode: str) -> None:
    """The official ``_init_weights`` of ``mode`` for one module (use it
    with ``model.apply``): Linear (and, pretraining, Conv2d) weights from
    :func:`trunc_normal_init_` with zero biases; LayerNorms to weight 1,
    bias 0; anything else untouched."""
    convs = (nn.Conv2d, ) if check_init_mode(mode) == PRETRAIN else ()
    if isinstance(module, (nn.Linear, ) + convs):
        trunc_normal_init_(module.weight, mode)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def rescale_output_projections_(blocks: Iterable[nn.Module],
                                first_depth: int = 1) -> None:
    """Divide the ``attn.proj`` and ``mlp.fc2`` weights of the ``i``-th of
    ``blocks`` by ``sqrt(2 * (first_depth + i))`` (the official
    ``fix_init_weight``; BEiT v2's aggregation blocks continue the depth count
    after ``early_layers``: ``fix_init_cls_pt_weight``)."""
    for i, block in enumerate(blocks):
        scale = math.sqrt(2.0 * (first_depth + i))
        block.attn.proj.weight.div_(scale)
        block.mlp.fc2.weight.div_(scale)
