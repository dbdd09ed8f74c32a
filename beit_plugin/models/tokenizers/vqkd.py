"""VQ-KD (BEiT v2): a ViT tokenizer trained to let a shallow decoder
reconstruct a teacher's patch features from the quantized tokens."""
import re
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from beit_plugin.registry import MODELS
from ..backbones import BEiT
from ..backbones.weight_init import FINETUNE, init_module_
from .base import SYMMETRIC_NORM, Norm, Tokenizer
from .quantizer import NormEMAVectorQuantizer

# The official VQ-KD ViTs: absolute positions, no relative bias, no layer
# scale, final norm, all tokens returned, and the initialisation of the
# fine-tuning VisionTransformer they are (beit2/modeling_vqkd.py, VQKD)
VIT_DEFAULTS = dict(
    init_mode=FINETUNE,
    use_abs_pos_emb=True,
    use_rel_pos_bias=False,
    use_shared_rel_pos_bias=False,
    layer_scale_init_value=0.,
    final_norm=True,
    out_type='raw',
    out_indices=-1)


def _task_layer(in_dims: int, out_dims: int) -> nn.Sequential:
    """``Linear -> Tanh -> Linear``, as the official ``*_task_layer``."""
    return nn.Sequential(
        nn.Linear(in_dims, in_dims), nn.Tanh(), nn.Linear(in_dims, out_dims))


@MODELS.register_module()
class VQKDTokenizer(Tokenizer):
    """Vector-quantized knowledge distillation tokenizer.

    ``img -> encoder (BEiT) -> patch tokens (B, N, C) -> encode_task_layer
    -> (B, N, D) -> quantizer (K codes, cosine, EMA) -> (B, D, H, W) ->
    decoder (BEiT, patch size 1) -> decode_task_layer -> (B, N, C_t)``,
    trained with ``1 - cos(decoder output, teacher feature)`` averaged over
    patches plus the quantizer's commitment loss. Module names follow the
    official ``VQKD`` (``encoder``, ``encode_task_layer``, ``quantize``,
    ``decoder``, ``decode_task_layer``); the teacher is not saved in the
    state dict (it is rebuilt from its own checkpoint).

    Args:
        encoder (dict): keyword arguments of :class:`BEiT` (no ``type``),
            over the official VQ-KD defaults :data:`VIT_DEFAULTS`; the input
            resolution and patch size are the encoder's.
        decoder (dict, optional): keyword arguments of the decoder
            :class:`BEiT` (e.g. ``arch`` with 3 layers); ``img_size``,
            ``patch_size`` (1) and ``in_channels`` (``embed_dims``) are set
            here. None for an encoder-only target generator.
        teacher (dict, optional): teacher config (:class:`HOGTeacher`,
            :class:`BackboneTeacher` ...), built with this tokenizer's
            ``input_norm``; needed for training.
        target_dims (int, optional): teacher feature size ``C_t`` when there
            is a decoder but no teacher (loading trained weights).
        num_embed (int): codebook size ``K``. Defaults to 8192.
        embed_dims (int): code dimension ``D``. Defaults to 32.
        beta (float): commitment loss weight. Defaults to 1.
        decay (float): codebook EMA decay. Defaults to 0.99.
        kmeans_init (bool): k-means init of the codebook on the first
            training batch. Defaults to True.
        restart_dead_codes (bool): re-seed dead codes from the batch.
            Defaults to False.
        dead_code_threshold (float): relative EMA cluster size under which
            a code is dead. Defaults to 0.1.
        input_norm (dict): input normalisation (0-255 RGB). Defaults to
            ``[-1, 1]`` (mean = std = 127.5), as the official tokenizers.
        frozen (bool): freeze once built. Defaults to False.
        data_preprocessor (dict, optional): see :class:`Tokenizer`.
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self,
                 encoder: Dict,
                 decoder: Optional[Dict] = None,
                 teacher: Optional[Dict] = None,
                 target_dims: Optional[int] = None,
                 num_embed: int = 8192,
                 embed_dims: int = 32,
                 beta: float = 1.0,
                 decay: float = 0.99,
                 kmeans_init: bool = True,
                 restart_dead_codes: bool = False,
                 dead_code_threshold: float = 0.1,
                 input_norm: Norm = SYMMETRIC_NORM,
                 frozen: bool = False,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(input_norm, frozen, data_preprocessor, init_cfg)
        self.vocab_size = num_embed
        self.encoder = BEiT(**{**VIT_DEFAULTS, **encoder})
        self.downsample = self.encoder.patch_size
        width = self.encoder.embed_dims
        self.encode_task_layer = _task_layer(width, embed_dims)
        self.quantize = NormEMAVectorQuantizer(
            num_embed,
            embed_dims,
            beta=beta,
            decay=decay,
            kmeans_init=kmeans_init,
            restart_dead_codes=restart_dead_codes,
            dead_code_threshold=dead_code_threshold)
        self.teacher = MODELS.build(
            teacher, default_args=dict(input_norm=self.input_norm)) \
            if teacher is not None else None
        if self.teacher is not None:
            target_dims = self.teacher.out_channels
        self.decoder = self.decode_task_layer = None
        if decoder is not None:
            if target_dims is None:
                raise ValueError('a decoder needs a teacher or target_dims')
            fixed = dict(img_size=self.encoder.patch_grid, patch_size=1,
                         in_channels=embed_dims)
            self.decoder = BEiT(**{**VIT_DEFAULTS, **decoder, **fixed})
            self.decode_task_layer = _task_layer(self.decoder.embed_dims,
                                                 target_dims)
        # the official VQKD._init_weights: timm's trunc_normal_(std=.02)
        for layer in (self.encode_task_layer, self.decode_task_layer):
            for module in layer or ():
                init_module_(module, FINETUNE)
        self._register_state_dict_hook(self._drop_teacher)
        self._register_load_state_dict_pre_hook(self.adapt_state_dict)
        self._built()

    def encode(self, img: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and quantize (updating the codebook in training mode).

        Args:
            img: ``(B, 3, H * p, W * p)`` normalised images.

        Returns:
            ``(B, N, D)`` quantized codes (straight-through), the
            quantizer loss and ``(B, N)`` token ids.
        """
        feats = self.encoder(img)[0][:, 1:]
        with torch.autocast(img.device.type, enabled=False):
            return self.quantize(self.encode_task_layer(feats.float()))

    def decode(self, codes: torch.Tensor, grid: Tuple[int, int]
               ) -> torch.Tensor:
        """``(B, N, D)`` codes on ``grid`` -> ``(B, N, C_t)`` predictions of
        the teacher's features."""
        batch, _, dims = codes.shape
        codes = codes.transpose(1, 2).reshape(batch, dims, *grid)
        return self.decode_task_layer(self.decoder(codes)[0][:, 1:])

    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of a batch.

        Args:
            inputs: ``(B, 3, H * p, W * p)`` normalised images.

        Returns:
            ``loss_rec`` (mean ``1 - cos`` to the teacher's patch features)
            and ``loss_quant`` (commitment).
        """
        if self.teacher is None or self.decoder is None:
            raise RuntimeError('training VQ-KD needs a decoder and a teacher')
        grid = (inputs.shape[-2] // self.downsample,
                inputs.shape[-1] // self.downsample)
        target = self.teacher(inputs, grid)
        codes, loss_quant, _ = self.encode(inputs)
        pred = self.decode(codes, grid)
        cosine = F.cosine_similarity(pred.float(), target.float(), dim=-1)
        return dict(loss_rec=(1 - cosine).mean(), loss_quant=loss_quant)

    @torch.no_grad()
    def get_codebook_indices(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H * p, W * p)`` normalised images -> ``(B, N)`` long ids.

        Never changes the codebook (also in training mode)."""
        feats = self.encoder(img)[0][:, 1:]
        with torch.autocast(img.device.type, enabled=False):
            return self.quantize.get_indices(
                self.encode_task_layer(feats.float()))

    def check_initialised(self, checkpoint: str) -> None:
        """A codebook still waiting for its k-means initialisation (saved
        before the first training step) is refused."""
        if not self.quantize.embedding.is_initialised():
            raise ValueError(
                f'{checkpoint}: the codebook of this VQ-KD tokenizer was '
                'never initialised (quantize.embedding.initted is 0: saved '
                'before its first training step), so its token ids are '
                'meaningless')

    def _drop_teacher(self, module: nn.Module, state_dict: Dict, prefix: str,
                      local_metadata: Dict) -> None:
        """``state_dict`` hook: the teacher is rebuilt from its own
        checkpoint, so tokenizer checkpoints leave it out."""
        teacher = prefix + 'teacher.'
        for key in [k for k in state_dict if k.startswith(teacher)]:
            del state_dict[key]

    def adapt_state_dict(self, state_dict: Dict, prefix: str, *args,
                         **kwargs) -> None:
        """``load_state_dict`` pre-hook: a checkpoint without the teacher
        keeps the teacher as loaded from its own checkpoint."""
        if self.teacher is None:
            return
        for key, value in self.teacher.state_dict().items():
            state_dict.setdefault(f'{prefix}teacher.{key}', value)


# MMPretrain ``BEiTViT`` key -> ours (the official / timm names).
_MMPRETRAIN_VIT_KEYS = [
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'^ln1\.', 'norm.'),
    (r'^ln2\.', 'fc_norm.'),
]


def _vit_key_from_mmpretrain(key: str) -> str:
    for pattern, repl in _MMPRETRAIN_VIT_KEYS:
        new, count = re.subn(pattern, repl, key)
        if count:
            return new
    return key


def vqkd_from_mmpretrain(state_dict: Dict[str, torch.Tensor]
                         ) -> Dict[str, torch.Tensor]:
    """Convert an MMPretrain ``VQKD`` state dict to :class:`VQKDTokenizer`.

    The encoder (MMPretrain ``BEiTViT``: ``layers.i.ln1``, ``ffn.layers``,
    ``patch_embed.projection``, final ``ln1`` ...) is renamed to our
    ``BEiT`` names; relative position index buffers are dropped. The
    ``encode_task_layer`` and ``quantize`` keys are the same (the
    quantizer's load hook turns ``quantize.cluster_size`` into its EMA
    statistics). Load the result with an encoder-only tokenizer
    (``decoder=None``) whose encoder config matches.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith('relative_position_index'):
            continue
        if key.startswith('encoder.'):
            key = 'encoder.' + _vit_key_from_mmpretrain(key[len('encoder.'):])
        out[key] = value
    return out
