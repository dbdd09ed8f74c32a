"""Teachers of VQ-KD: the per-patch features its decoder learns to predict.

Every teacher is frozen and maps the tokenizer's input (normalised with the
tokenizer's ``input_norm``) to ``(B, N, C)`` features on the tokenizer's
patch grid:

- :class:`HOGTeacher`: weight-free histograms of oriented gradients, so that
  tokenizer training runs with nothing downloaded;
- :class:`BackboneTeacher`: any registered backbone (e.g. CLIP ViT-B/16 or
  DINO ViT-B/16, the paper's teachers) loaded from a local checkpoint.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from beit_plugin.checkpoint_loading import safe_torch_load
from beit_plugin.registry import MODELS
from .quantizer import l2norm

Grid = Tuple[int, int]
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def soft_bins(position: torch.Tensor, weight: torch.Tensor, num_bins: int,
              circular: bool) -> torch.Tensor:
    """Soft-assign every pixel's ``weight`` to the two bins nearest its
    fractional bin ``position`` (linear interpolation).

    Args:
        position: ``(B, C, H, W)`` positions in bin units.
        weight: ``(B, C, H, W)`` the amount each pixel adds.
        num_bins: ``K``.
        circular: bins wrap around (orientations); otherwise positions must
            lie in ``[0, K - 1]`` (levels).

    Returns:
        ``(B, C, K, H, W)`` per-pixel histograms.
    """
    lower = position.floor()
    if not circular:
        lower = lower.clamp(max=num_bins - 2)
    upper_weight = position - lower
    lower = lower.long() % num_bins
    upper = (lower + 1) % num_bins
    batch, channels, height, width = position.shape
    hist = weight.new_zeros(batch, channels, num_bins, height, width)
    hist.scatter_add_(2, lower.unsqueeze(2),
                      (weight * (1 - upper_weight)).unsqueeze(2))
    hist.scatter_add_(2, upper.unsqueeze(2),
                      (weight * upper_weight).unsqueeze(2))
    return hist


class Teacher(nn.Module):
    """Base class: frozen, always in eval mode, with the affine map from the
    tokenizer's normalisation to the teacher's own.

    Args:
        input_norm (dict, optional): ``mean``/``std`` (0-255 RGB) of the
            inputs the teacher is given (the tokenizer's ``input_norm``,
            passed in by the tokenizer); None for raw pixels.
        mean (Sequence[float]): mean (0-255 RGB) the teacher expects.
        std (Sequence[float]): std (0-255 RGB) the teacher expects.

    Attributes:
        out_channels (int): ``C`` of the features.
    """
    out_channels: int

    def __init__(self, input_norm: Optional[Dict], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        in_mean = torch.tensor(input_norm['mean'] if input_norm else (0., ) *
                               3).view(1, 3, 1, 1)
        in_std = torch.tensor(input_norm['std'] if input_norm else (1., ) *
                              3).view(1, 3, 1, 1)
        mean = torch.tensor(mean, dtype=torch.float).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float).view(1, 3, 1, 1)
        self.register_buffer('scale', in_std / std, persistent=False)
        self.register_buffer('shift', (in_mean - mean) / std,
                             persistent=False)

    def normalise(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` tokenizer input -> the teacher's normalisation."""
        return img.float() * self.scale + self.shift

    def train(self, mode: bool = True) -> 'Teacher':
        """Teachers stay in eval mode."""
        return super().train(False)


@MODELS.register_module()
class HOGTeacher(Teacher):
    """Histograms of oriented gradients per patch, computed in torch.

    Per RGB channel (on ``[0, 1]`` pixels): central-difference gradients,
    unsigned orientation soft-assigned to the two nearest of ``num_bins``
    bins and weighted by the gradient magnitude, summed over
    ``cells_per_side x cells_per_side`` cells per patch. Each cell histogram
    is centred (its mean over the bins subtracted), so that the target
    describes the orientation profile: raw histograms are all positive and
    lie close together (mean cosine 0.67 to their average on the demo
    data, against 0.05 centred), which lets a VQ-KD decoder reach a low
    cosine loss by predicting the average and ignoring the tokens, and the
    codebook then collapses. A patch's descriptor concatenates its cells'
    histograms (channel, bin, cell row, cell column) and is L2-normalised;
    a flat patch gives zeros.

    Gradients alone describe a patch's texture down to its phase, which its
    neighbours do not predict (on the demo data a HOG-only tokenizer gives a
    patch the token of its left neighbour 1.5 % of the time), so masked
    image modeling on such tokens learns little. ``colour_bins > 0`` appends
    each patch's colour distribution: per channel, pixel values soft-assigned
    to ``colour_bins`` evenly spaced levels over [0, 1], averaged over the
    patch and L2-normalised. The two unit parts are weighted by
    ``sqrt(1 - colour_weight)`` and ``sqrt(colour_weight)``, so that the
    cosine of two descriptors is the weighted mean of their gradient and
    colour cosines (and a flat patch is described by its colour).

    Args:
        num_bins (int): orientation bins over 0-180 degrees. Defaults to 9.
        cells_per_side (int): cells along each side of a patch; the patch
            size must be a multiple. Defaults to 2.
        colour_bins (int): colour levels per channel; 0 for gradients only.
            Defaults to 0.
        colour_weight (float): weight of the colour part in ``[0, 1]``.
            Defaults to 0.5 (used only with ``colour_bins > 0``).
        input_norm (dict, optional): see :class:`Teacher`.

    ``out_channels = 3 * num_bins * cells_per_side ** 2 + 3 * colour_bins``.
    """

    def __init__(self,
                 num_bins: int = 9,
                 cells_per_side: int = 2,
                 colour_bins: int = 0,
                 colour_weight: float = 0.5,
                 input_norm: Optional[Dict] = None) -> None:
        super().__init__(input_norm, mean=(0., ) * 3, std=(255., ) * 3)
        if colour_bins < 0 or colour_bins == 1:
            raise ValueError('colour_bins must be 0 or at least 2, got '
                             f'{colour_bins}')
        if not 0 <= colour_weight <= 1:
            raise ValueError('colour_weight must be in [0, 1], got '
                             f'{colour_weight}')
        self.num_bins = num_bins
        self.cells_per_side = cells_per_side
        self.colour_bins = colour_bins
        self.colour_weight = colour_weight
        self.out_channels = 3 * num_bins * cells_per_side**2 + 3 * colour_bins

    @torch.no_grad()
    def forward(self, img: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``(B, 3, H_img, W_img)`` -> ``(B, N, out_channels)``,
        ``N = grid[0] * grid[1]`` row-major."""
        x = self.normalise(img)
        batch, channels, height, width = x.shape
        cps = self.cells_per_side
        cells = (grid[0] * cps, grid[1] * cps)
        if height % cells[0] or width % cells[1] or \
                height // cells[0] != width // cells[1]:
            raise ValueError(f'input {(height, width)} does not split into '
                             f'{cells} square cells of whole pixels')
        padded = F.pad(x, (1, 1, 1, 1), mode='replicate')
        grad_x = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
        grad_y = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
        magnitude = torch.hypot(grad_x, grad_y)
        angle = torch.atan2(grad_y, grad_x) % math.pi
        hist = soft_bins(angle * (self.num_bins / math.pi) - 0.5, magnitude,
                         self.num_bins, circular=True)
        hist = F.avg_pool2d(hist.flatten(1, 2), height // cells[0])
        hist = hist.view(batch, channels, self.num_bins, *cells)
        hist = hist - hist.mean(dim=2, keepdim=True)
        hist = hist.view(batch, -1, grid[0], cps, grid[1], cps)
        hist = hist.permute(0, 2, 4, 1, 3, 5).reshape(
            batch, grid[0] * grid[1], -1)
        if not self.colour_bins:
            return l2norm(hist)
        colour = self.colour_histogram(x, grid)
        return torch.cat([
            math.sqrt(1 - self.colour_weight) * l2norm(hist),
            math.sqrt(self.colour_weight) * colour
        ], dim=-1)

    def colour_histogram(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``(B, 3, H, W)`` pixels in [0, 1] -> ``(B, N, 3 * colour_bins)``
        unit per-patch colour distributions (channel-major)."""
        batch, channels, height, width = x.shape
        hist = soft_bins(x.clamp(0, 1) * (self.colour_bins - 1),
                         torch.ones_like(x), self.colour_bins, circular=False)
        hist = F.avg_pool2d(hist.flatten(1, 2), height // grid[0])
        hist = hist.view(batch, channels * self.colour_bins, -1)
        return l2norm(hist.transpose(1, 2))


def qkv_bias_to_qv(state_dict: Dict[str, torch.Tensor]
                   ) -> Dict[str, torch.Tensor]:
    """timm / DINO ViT ``*.attn.qkv.bias`` -> our ``*.attn.q_bias`` and
    ``*.attn.v_bias``. The k bias is dropped exactly: it adds ``q . b_k`` to
    every logit of a query alike, which the softmax ignores."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith('attn.qkv.bias'):
            q_bias, _, v_bias = value.chunk(3)
            stem = key[:-len('qkv.bias')]
            out[stem + 'q_bias'] = q_bias
            out[stem + 'v_bias'] = v_bias
        else:
            out[key] = value
    return out


def _with_prefix(state_dict: Dict[str, torch.Tensor],
                 prefix: str) -> Dict[str, torch.Tensor]:
    return {
        key[len(prefix):]: value
        for key, value in state_dict.items() if key.startswith(prefix)
    }


@MODELS.register_module()
class BackboneTeacher(Teacher):
    """A registered backbone from a local checkpoint.

    The input is mapped to the teacher's normalisation and resized to
    ``input_size``; the last backbone output gives either tokens
    ``(B, extra + N_t, C)`` (the first ``num_extra_tokens`` dropped, then
    the optional projection applied) or a feature map ``(B, C, H_t, W_t)``,
    resized bilinearly to the tokenizer's grid when the two differ.

    The checkpoint (a plain state dict, or one wrapped in ``state_dict`` /
    ``model``) is read with ``torch.load(weights_only=True)``; the keys under
    ``backbone_prefix`` load strictly into the backbone, and the matrix under
    ``projection_key``, if given, projects the tokens.

    Examples (``configs/vqkd/``): CLIP ViT-B/16 as MMPretrain's
    ``VisionTransformer`` (``pre_norm``, QuickGELU, ``out_type='raw'``) with
    its ``(768, 512)`` image projection; DINO ViT-B/16 as our ``BEiT``
    (absolute positions, no layer scale) with ``split_qkv_bias=True``, which
    loads the official ``dino_vitbase16_pretrain.pth`` as it is.

    Args:
        backbone (dict): backbone config (any registered backbone).
        out_channels (int): ``C`` of the (projected) features.
        checkpoint (str): local path of the weights.
        backbone_prefix (str): key prefix of the backbone weights in the
            checkpoint. Defaults to ''.
        projection_key (str, optional): checkpoint key of a ``(C_backbone,
            out_channels)`` matrix the tokens are multiplied with (CLIP's
            ``visual.proj``). Defaults to None.
        split_qkv_bias (bool): convert timm-style ``qkv.bias`` (see
            :func:`qkv_bias_to_qv`). Defaults to False.
        num_extra_tokens (int): leading non-patch tokens (CLS ...).
            Defaults to 1.
        input_size (int | tuple, optional): size the teacher sees; None
            keeps the input size. Defaults to 224.
        mean (Sequence[float]): teacher normalisation mean (0-255 RGB).
            Defaults to ImageNet's.
        std (Sequence[float]): teacher normalisation std. Defaults to
            ImageNet's.
        input_norm (dict, optional): see :class:`Teacher`.
    """

    def __init__(self,
                 backbone: Dict,
                 out_channels: int,
                 checkpoint: str,
                 backbone_prefix: str = '',
                 projection_key: Optional[str] = None,
                 split_qkv_bias: bool = False,
                 num_extra_tokens: int = 1,
                 input_size: Union[int, Grid, None] = 224,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 input_norm: Optional[Dict] = None) -> None:
        super().__init__(input_norm, mean, std)
        self.out_channels = out_channels
        self.num_extra_tokens = num_extra_tokens
        self.input_size = (input_size, ) * 2 if isinstance(
            input_size, int) else input_size
        self.backbone = MODELS.build(backbone)

        state = safe_torch_load(checkpoint, map_location='cpu')
        for key in ('state_dict', 'model'):
            if isinstance(state.get(key), dict):
                state = state[key]
        backbone_state = _with_prefix(state, backbone_prefix)
        if split_qkv_bias:
            backbone_state = qkv_bias_to_qv(backbone_state)
        self.backbone.load_state_dict(backbone_state, strict=True)
        self.register_buffer(
            'projection',
            state[projection_key].float() if projection_key else None)
        for param in self.parameters():
            param.requires_grad = False
        self.train(False)

    @torch.no_grad()
    def forward(self, img: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``(B, 3, H_img, W_img)`` -> ``(B, N, out_channels)``,
        ``N = grid[0] * grid[1]`` row-major."""
        x = self.normalise(img)
        if self.input_size and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(
                x, size=self.input_size, mode='bicubic', align_corners=False)
        feats = self.backbone(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[-1]
        if feats.dim() == 3:
            tokens = feats[:, self.num_extra_tokens:]
            if self.projection is not None:
                tokens = tokens @ self.projection
            num = tokens.shape[1]
            rows = round(math.sqrt(num * x.shape[-2] / x.shape[-1]))
            feats = tokens.transpose(1, 2).reshape(
                tokens.shape[0], -1, rows, num // rows)
        if tuple(feats.shape[-2:]) != tuple(grid):
            feats = F.interpolate(
                feats, size=tuple(grid), mode='bilinear', align_corners=False)
        return feats.flatten(2).transpose(1, 2)
