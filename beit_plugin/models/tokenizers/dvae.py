"""BEiT v1 tokenizers: a trainable discrete VAE (Gumbel-softmax) and the
DALL-E encoder architecture that OpenAI's published weights load into."""
import math
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce
from torch import nn

from beit_plugin.registry import MODELS
from .base import SYMMETRIC_NORM, Norm, Tokenizer

LOGIT_LAPLACE_EPS = 0.1


def logit_laplace_norm(eps: float = LOGIT_LAPLACE_EPS) -> Norm:
    """DALL-E's input map ``x -> (1 - 2 eps) x + eps`` of ``x`` in [0, 1],
    written as ``(pixel - mean) / std`` of 0-255 pixels."""
    std = 255. / (1 - 2 * eps)
    return dict(mean=(-eps * std, ) * 3, std=(std, ) * 3)


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))``, ``(B, C, H, W)``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@MODELS.register_module()
class DiscreteVAE(Tokenizer):
    """Discrete VAE with a Gumbel-softmax bottleneck (BEiT v1 tokenizer).

    Encoder: ``num_layers`` x (4x4 stride-2 conv, ReLU, :class:`ResBlock`),
    then a 1x1 conv to ``num_tokens`` logits ``(B, K, H, W)``. Training
    samples a relaxed one-hot with Gumbel-softmax at the current
    temperature (``hard=True``: one-hot forward, soft gradient), mixes the
    codebook ``(K, codebook_dim)`` with it, and the decoder (4x4 stride-2
    transposed convs with residual blocks, then a 1x1 conv) reconstructs
    the input. Loss: reconstruction (MSE or smooth L1, on the normalised
    input) plus ``kl_div_loss_weight`` times KL(q || uniform) summed over the
    codes, the token positions and the batch, as the official ``DiscreteVAE``
    (unilm ``beit/modeling_discrete_vae.py``, from lucidrains' DALLE-pytorch)
    computes it: its ``F.kl_div(log_uniform, log_qy, None, None,
    'batchmean', log_target=True)`` divides the sum by the first dimension of
    ``log_uniform``, which has one element. So the weight means what it means
    there, at the same batch size per device. The temperature anneals per
    training step as ``max(temperature * exp(-anneal_rate * step),
    min_temperature)``; the step count is a buffer, so a resumed run
    continues the schedule. Token ids are the argmax of the logits.

    Args:
        num_tokens (int): vocabulary ``K``. Defaults to 8192.
        codebook_dim (int): codebook vector size. Defaults to 512.
        num_layers (int): down/upsampling stages (``downsample =
            2 ** num_layers``). Defaults to 3.
        hidden_dims (int): conv channels. Defaults to 64.
        temperature (float): initial Gumbel-softmax temperature.
            Defaults to 0.9.
        min_temperature (float): lower bound of the annealing.
            Defaults to 0.5.
        anneal_rate (float): per-step exponential annealing rate; 0 keeps
            the temperature. Defaults to 0.
        straight_through (bool): hard one-hot samples with straight-through
            gradients. Defaults to False.
        kl_div_loss_weight (float): weight of KL to the uniform prior (a sum,
            see above). Defaults to 0.
        recon_loss (str): ``'mse'`` or ``'smooth_l1'``. Defaults to 'mse'.
        input_norm (dict): input normalisation (0-255 RGB). Defaults to
            ``[-1, 1]``.
        frozen (bool): freeze once built. Defaults to False.
        data_preprocessor (dict, optional): see :class:`Tokenizer`.
        init_cfg (dict, optional): MMEngine initialisation config.

    Attributes:
        last_counts: ``(K,)`` argmax-token counts of the last training step,
            summed over ranks (for usage statistics).
    """
    RECON_LOSSES = dict(mse=F.mse_loss, smooth_l1=F.smooth_l1_loss)

    def __init__(self,
                 num_tokens: int = 8192,
                 codebook_dim: int = 512,
                 num_layers: int = 3,
                 hidden_dims: int = 64,
                 temperature: float = 0.9,
                 min_temperature: float = 0.5,
                 anneal_rate: float = 0.,
                 straight_through: bool = False,
                 kl_div_loss_weight: float = 0.,
                 recon_loss: str = 'mse',
                 input_norm: Norm = SYMMETRIC_NORM,
                 frozen: bool = False,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(input_norm, frozen, data_preprocessor, init_cfg)
        if recon_loss not in self.RECON_LOSSES:
            raise ValueError(f'recon_loss {recon_loss!r} is not one of '
                             f'{sorted(self.RECON_LOSSES)}')
        self.vocab_size = num_tokens
        self.downsample = 2**num_layers
        self.initial_temperature = temperature
        self.min_temperature = min_temperature
        self.anneal_rate = anneal_rate
        self.straight_through = straight_through
        self.kl_div_loss_weight = kl_div_loss_weight
        self.recon_loss = recon_loss

        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        encoder, decoder = [], []
        for i in range(num_layers):
            encoder += [
                nn.Sequential(
                    nn.Conv2d(3 if i == 0 else hidden_dims, hidden_dims, 4,
                              stride=2, padding=1), nn.ReLU()),
                ResBlock(hidden_dims, hidden_dims)
            ]
            decoder += [
                nn.Sequential(
                    nn.ConvTranspose2d(
                        codebook_dim if i == 0 else hidden_dims,
                        hidden_dims, 4, stride=2, padding=1), nn.ReLU()),
                ResBlock(hidden_dims, hidden_dims)
            ]
        self.encoder = nn.Sequential(*encoder,
                                     nn.Conv2d(hidden_dims, num_tokens, 1))
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(hidden_dims, 3, 1))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))
        self.register_buffer('last_counts', torch.zeros(num_tokens),
                             persistent=False)
        self._built()

    @property
    def temperature(self) -> float:
        """Gumbel-softmax temperature at the current step."""
        return max(
            self.initial_temperature *
            math.exp(-self.anneal_rate * int(self.num_updates)),
            self.min_temperature)

    def decode(self, one_hot: torch.Tensor) -> torch.Tensor:
        """``(B, K, H, W)`` (relaxed) one-hot tokens -> ``(B, 3, H * d,
        W * d)`` images, ``d = downsample``."""
        codes = torch.einsum('bkhw,kc->bchw', one_hot, self.codebook.weight)
        return self.decoder(codes)

    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of a batch of ``(B, 3, H * d, W * d)`` normalised images:
        ``loss_recon``, ``loss_kl`` (when weighted) and the ``temperature``
        used (logged, not summed)."""
        logits = self.encoder(inputs)
        temperature = self.temperature
        one_hot = F.gumbel_softmax(
            logits, tau=temperature, hard=self.straight_through, dim=1)
        recon = self.decode(one_hot)
        losses = dict(
            loss_recon=self.RECON_LOSSES[self.recon_loss](recon, inputs),
            temperature=torch.tensor(temperature, device=inputs.device))
        if self.kl_div_loss_weight > 0:
            log_q = F.log_softmax(logits, dim=1)
            kl = (log_q.exp() * (log_q + math.log(self.vocab_size))).sum()
            losses['loss_kl'] = self.kl_div_loss_weight * kl
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(
                    logits.argmax(1).flatten(),
                    minlength=self.vocab_size).float()
                all_reduce(counts)
                self.last_counts.copy_(counts)
                self.num_updates += 1
        return losses

    @torch.no_grad()
    def reconstruct(self, img: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the hard token ids: ``(B, 3, H, W)`` in,
        ``(B, 3, H, W)`` out (both normalised with ``input_norm``)."""
        ids = self.encoder(img).argmax(1)
        one_hot = F.one_hot(ids, self.vocab_size).permute(0, 3, 1, 2)
        return self.decode(one_hot.to(self.codebook.weight))

    @torch.no_grad()
    def get_codebook_indices(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H * d, W * d)`` normalised images -> ``(B, H * W)`` long
        ids (argmax of the logits)."""
        return self.encoder(img).argmax(1).flatten(1)


def _dalle_conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    """DALL-E's conv: 'same' padding, ``N(0, 1 / (n_in * k^2))`` weights,
    zero bias."""
    conv = nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)
    nn.init.normal_(conv.weight, std=1 / math.sqrt(n_in * kernel**2))
    nn.init.zeros_(conv.bias)
    return conv


class DALLEEncoderBlock(nn.Module):
    """DALL-E ``EncoderBlock``: ``id_path(x) + post_gain * res_path(x)``,
    ``res_path`` = 4 x (ReLU, conv) with 3x3, 3x3, 3x3, 1x1 kernels and
    ``n_out // 4`` hidden channels, ``post_gain = 1 / n_layers ** 2``."""

    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        hidden = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = _dalle_conv(n_in, n_out, 1) if n_in != n_out else \
            nn.Identity()
        self.res_path = nn.Sequential(
            OrderedDict([
                ('relu_1', nn.ReLU()),
                ('conv_1', _dalle_conv(n_in, hidden, 3)),
                ('relu_2', nn.ReLU()),
                ('conv_2', _dalle_conv(hidden, hidden, 3)),
                ('relu_3', nn.ReLU()),
                ('conv_3', _dalle_conv(hidden, hidden, 3)),
                ('relu_4', nn.ReLU()),
                ('conv_4', _dalle_conv(hidden, n_out, 1)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


@MODELS.register_module()
class DALLEEncoder(Tokenizer):
    """The DALL-E dVAE encoder (OpenAI ``dall_e.Encoder``), the BEiT v1
    target generator: 8192 tokens, a 14 x 14 token map from a 112 px view
    (``downsample = 8``), inputs through the logit-laplace map
    ``(1 - 2 * 0.1) * x + 0.1`` of ``x`` in [0, 1] (``input_norm`` says
    that as mean/std of 0-255 pixels).

    Module names follow OpenAI's (``blocks.input``,
    ``blocks.group_1.block_1.res_path.conv_1`` ... ``blocks.output.conv``);
    their ``.w`` / ``.b`` parameter names load into our ``.weight`` /
    ``.bias``, so OpenAI's weights (and MMPretrain's ``dalle_encoder.pth``,
    same layout) load directly, e.g. through
    ``init_cfg=dict(type='Pretrained', checkpoint='dalle_encoder.pth')``.

    OpenAI publishes ``encoder.pkl``, a pickled module, which we never
    unpickle. Convert it once, in your own trusted environment with
    OpenAI's ``dall_e`` package installed, to a plain state dict::

        import torch
        encoder = torch.load('encoder.pkl', map_location='cpu',
                             weights_only=False)  # runs the pickle's code
        torch.save(encoder.state_dict(), 'dalle_encoder.pth')

    Args:
        group_count (int): groups (max-pool between them). Defaults to 4.
        n_hid (int): width of the first group (doubled per group).
            Defaults to 256.
        n_blk_per_group (int): blocks per group. Defaults to 2.
        input_channels (int): image channels. Defaults to 3.
        vocab_size (int): tokens. Defaults to 8192.
        frozen (bool): freeze once built. Defaults to True.
        data_preprocessor (dict, optional): see :class:`Tokenizer`.
        init_cfg (dict, optional): e.g. a ``Pretrained`` checkpoint.
    """

    def __init__(self,
                 group_count: int = 4,
                 n_hid: int = 256,
                 n_blk_per_group: int = 2,
                 input_channels: int = 3,
                 vocab_size: int = 8192,
                 frozen: bool = True,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(logit_laplace_norm(), frozen, data_preprocessor,
                         init_cfg)
        self.vocab_size = vocab_size
        self.downsample = 2**(group_count - 1)
        n_layers = group_count * n_blk_per_group
        layers = [('input', _dalle_conv(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(group_count):
            out = n_hid * 2**g
            group = [(f'block_{i + 1}',
                      DALLEEncoderBlock(width if i == 0 else out, out,
                                        n_layers))
                     for i in range(n_blk_per_group)]
            if g < group_count - 1:
                group.append(('pool', nn.MaxPool2d(kernel_size=2)))
            layers.append(
                (f'group_{g + 1}', nn.Sequential(OrderedDict(group))))
            width = out
        output = OrderedDict([('relu', nn.ReLU()),
                              ('conv', _dalle_conv(width, vocab_size, 1))])
        layers.append(('output', nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))
        self._register_load_state_dict_pre_hook(self.adapt_state_dict)
        self._built()

    def get_logits(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H * 8, W * 8)`` mapped images -> ``(B, vocab, H, W)``."""
        return self.blocks(img.float())

    @torch.no_grad()
    def get_codebook_indices(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H * 8, W * 8)`` mapped images -> ``(B, H * W)`` long
        ids."""
        return self.get_logits(img).argmax(1).flatten(1)

    @staticmethod
    def adapt_state_dict(state_dict: Dict, prefix: str, *args,
                         **kwargs) -> None:
        """Pre-hook of ``load_state_dict``: OpenAI's ``.w`` / ``.b``
        parameter names become ``.weight`` / ``.bias``."""
        names = {'.w': '.weight', '.b': '.bias'}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if key[-2:] in names:
                state_dict[key[:-2] + names[key[-2:]]] = state_dict.pop(key)
