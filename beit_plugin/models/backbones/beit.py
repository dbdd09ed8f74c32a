"""The BEiT backbone shared by pretraining, classification and segmentation."""
import math
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from torch import nn
from torch.utils.checkpoint import checkpoint

from beit_plugin.registry import MODELS
from .relative_position import (RelativePositionBias, infer_window,
                                resize_relative_position_table)
from .transformer_block import Block
from .weight_init import (FINETUNE, check_init_mode, init_module_,
                          rescale_output_projections_, trunc_normal_init_)

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap')


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int],
                     src_grid: Optional[Tuple[int, int]] = None
                     ) -> torch.Tensor:
    """Resize an absolute position embedding ``(1, 1+N, C)`` to ``grid``.

    The CLS entry is kept; the patch entries are resized bicubically
    (align_corners=False), as the official BEiT code does. ``src_grid`` is
    inferred (square) when omitted.
    """
    num = pos_embed.shape[1] - 1
    if src_grid is None:
        side = math.isqrt(num)
        if side * side != num:
            raise ValueError(
                f'pos_embed of shape {tuple(pos_embed.shape)} is not a square '
                'grid; pass its grid explicitly')
        src_grid = (side, side)
    if tuple(src_grid) == tuple(grid):
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patches.reshape(1, *src_grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches.float(), size=grid, mode='bicubic', align_corners=False)
    patches = patches.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution:
    ``(B, C_in, H_img, W_img) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int, dims: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, dims, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def check_pretrained_exists(init_cfg: Union[Dict, List[Dict]]) -> None:
    """Fail early, in one line, when a ``Pretrained`` ``init_cfg`` names a
    local file that does not exist.

    Raises:
        FileNotFoundError: naming the file, which is also its
            ``checkpoint`` attribute (``tools/train.py`` adds the command
            that writes a ``work_dirs/<name>/...`` checkpoint).
    """
    for cfg in init_cfg if isinstance(init_cfg, list) else [init_cfg]:
        path = cfg.get('checkpoint') if cfg.get('type') == 'Pretrained' \
            else None
        if not isinstance(path, str) or '://' in path or osp.exists(path):
            continue
        error = FileNotFoundError(f'init_cfg checkpoint {path} does not exist')
        error.checkpoint = path
        raise error


@MODELS.register_module()
class BEiT(BaseBackbone):
    """BEiT vision transformer (v1 and v2), one class for every job.

    A ViT with a CLS token, optional absolute position embedding, relative
    position bias (one table shared by all blocks, or one per block), q/v
    biases, layer scale, stochastic depth and a learnable mask token for
    masked image modeling. Parameter names never depend on the task, so one
    checkpoint serves pretraining, classification and segmentation; they
    follow the official code (and timm), not mmpretrain's ``BEiTViT``.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'``, ``'large'``
            (or ``'t'``, ``'s'``, ``'b'``, ``'l'``), or a dict with keys
            ``embed_dims``, ``num_layers``, ``num_heads``,
            ``feedforward_channels``. Defaults to ``'base'``.
        img_size (int | tuple): input size the position tables are built for.
            Other multiples of ``patch_size`` work too (tables are resized on
            the fly). Defaults to 224.
        patch_size (int): patch size. Defaults to 16.
        in_channels (int): input channels. Defaults to 3.
        out_indices (int | Sequence[int]): blocks whose output is returned;
            negative counts from the end. Defaults to -1.
        drop_rate (float): dropout after the position embedding and inside
            blocks. Defaults to 0.
        drop_path_rate (float): stochastic depth, linearly increasing to this
            value over the blocks. Defaults to 0.
        qkv_bias (bool): learn q and v biases. Defaults to True.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
        final_norm (bool): LayerNorm (``norm``) on the last block's output.
            Defaults to True.
        out_type (str): ``'raw'`` ``(B, 1+N, C)``, ``'cls_token'`` ``(B, C)``,
            ``'featmap'`` ``(B, C, H, W)`` patch tokens, ``'avg_featmap'``
            ``(B, C)`` mean of patch tokens then ``fc_norm`` (BEiT
            fine-tuning). Defaults to ``'raw'``.
        frozen_stages (int): freeze the embeddings (and the shared relative
            position bias) and the first ``frozen_stages`` blocks; with all
            blocks frozen, ``norm``/``fc_norm`` too. -1 freezes nothing.
            Defaults to -1.
        use_abs_pos_emb (bool): absolute position embedding. Defaults to
            False.
        use_rel_pos_bias (bool): a relative position bias table per block.
            Defaults to False.
        use_shared_rel_pos_bias (bool): one relative position bias table
            shared by all blocks (BEiT pretraining). Defaults to True.
        layer_scale_init_value (float): initial layer scale; 0 disables it.
            Defaults to 0.1.
        use_mask_token (bool): learn a mask token that replaces masked patch
            embeddings (pretraining). Defaults to False.
        with_cp (bool): gradient checkpointing of each block while training.
            Defaults to False.
        init_mode (str): the official initialisation this model starts from
            (see :mod:`~beit_plugin.models.backbones.weight_init`):
            ``'modeling_pretrain'`` (unilm's
            ``VisionTransformerForMaskedImageModeling``: std 0.02 truncated
            at +-0.02, patch-embedding conv included), which every
            pretraining config sets, or ``'modeling_finetune'`` (unilm's
            ``VisionTransformer``: untruncated std 0.02, PyTorch's default
            patch-embedding conv), the model classification, segmentation
            and VQ-KD build. A checkpoint loaded through ``init_cfg``
            replaces it. Defaults to ``'modeling_finetune'``.
        init_cfg (dict, optional): MMEngine initialisation config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.

    Loading a state dict adapts it to this model: relative position index
    buffers are dropped, a shared relative position bias is expanded into the
    per-block tables when this model has those, and the absolute position
    embedding and relative position tables are resized to this model's grid.
    A checkpoint of another width or depth is then refused with a
    ``ValueError`` naming the first offending key (and both shapes), where a
    non-strict load would only warn and leave the weights random.
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(
            embed_dims=192, num_layers=12, num_heads=3,
            feedforward_channels=768)),
        **dict.fromkeys(['s', 'small'], dict(
            embed_dims=384, num_layers=12, num_heads=6,
            feedforward_channels=1536)),
        **dict.fromkeys(['b', 'base'], dict(
            embed_dims=768, num_layers=12, num_heads=12,
            feedforward_channels=3072)),
        **dict.fromkeys(['l', 'large'], dict(
            embed_dims=1024, num_layers=24, num_heads=16,
            feedforward_channels=4096)),
    }

    def __init__(self,
                 arch: Union[str, Dict] = 'base',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 final_norm: bool = True,
                 out_type: str = 'raw',
                 frozen_stages: int = -1,
                 use_abs_pos_emb: bool = False,
                 use_rel_pos_bias: bool = False,
                 use_shared_rel_pos_bias: bool = True,
                 layer_scale_init_value: float = 0.1,
                 use_mask_token: bool = False,
                 with_cp: bool = False,
                 init_mode: str = FINETUNE,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.init_mode = check_init_mode(init_mode)
        self.arch_settings = self._arch_settings(arch)
        dims = self.arch_settings['embed_dims']
        depth = self.arch_settings['num_layers']
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type {out_type!r} is not one of '
                             f'{OUT_TYPES}')
        img_size = (img_size, ) * 2 if isinstance(img_size, int) else \
            tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f'img_size {img_size} is not a multiple of '
                             f'patch_size {patch_size}')
        self.embed_dims = dims
        self.num_layers = depth
        self.patch_size = patch_size
        self.patch_grid = (img_size[0] // patch_size,
                           img_size[1] // patch_size)
        self.out_type = out_type
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.out_indices = self._normalise_out_indices(out_indices, depth)

        self.patch_embed = PatchEmbed(in_channels, dims, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims)) \
            if use_mask_token else None
        num_patches = self.patch_grid[0] * self.patch_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dims)) \
            if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.rel_pos_bias = RelativePositionBias(
            self.patch_grid, self.arch_settings['num_heads']) \
            if use_shared_rel_pos_bias else None
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(
                dims,
                self.arch_settings['num_heads'],
                self.arch_settings['feedforward_channels'],
                window=self.patch_grid if use_rel_pos_bias else None,
                layer_scale_init_value=layer_scale_init_value,
                drop_path=rates[i],
                drop=drop_rate,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps) for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dims, eps=norm_eps) if final_norm else None
        self.fc_norm = nn.LayerNorm(dims, eps=norm_eps) \
            if out_type == 'avg_featmap' else None

        self._init_parameters()
        self._register_load_state_dict_pre_hook(self._load_hook)
        if frozen_stages > 0:
            self._freeze_stages()

    @classmethod
    def _arch_settings(cls, arch: Union[str, Dict]) -> Dict:
        keys = {'embed_dims', 'num_layers', 'num_heads',
                'feedforward_channels'}
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f'arch {arch!r} is not one of '
                                 f'{sorted(cls.arch_zoo)}')
            return dict(cls.arch_zoo[arch.lower()])
        missing = keys - set(arch)
        if missing:
            raise ValueError(f'arch dict misses keys {sorted(missing)}')
        return dict(arch)

    @staticmethod
    def _normalise_out_indices(out_indices: Union[int, Sequence[int]],
                               depth: int,
                               name: str = 'out_indices') -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        result = []
        for index in out_indices:
            if not -depth <= index < depth:
                raise ValueError(f'{name} entry {index} is out of range '
                                 f'for {depth} blocks')
            result.append(index % depth)
        return tuple(result)

    def _init_parameters(self) -> None:
        """The official initialisation of ``init_mode``: tokens and position
        embedding from the mode's truncated normal, then every module as the
        official ``_init_weights`` (Linear, for pretraining also the
        patch-embedding conv, and LayerNorm), then block ``i``'s output
        projections divided by ``sqrt(2 (i + 1))``. Relative position tables
        stay zero, as there."""
        for param in (self.cls_token, self.mask_token, self.pos_embed):
            if param is not None:
                trunc_normal_init_(param, self.init_mode)
        for module in self.modules():
            init_module_(module, self.init_mode)
        rescale_output_projections_(self.blocks)

    def init_weights(self) -> None:
        """Load ``init_cfg`` (e.g. a pretrained checkpoint) if one is set;
        without one, the constructor's initialisation stands.

        Raises:
            FileNotFoundError: a ``Pretrained`` local checkpoint is missing;
                the message names the file.
        """
        if self.init_cfg:
            check_pretrained_exists(self.init_cfg)
            super().init_weights()

    def _frozen_modules(self):
        yield self.patch_embed
        if self.rel_pos_bias is not None:
            yield self.rel_pos_bias
        yield from self.blocks[:self.frozen_stages]
        if self.frozen_stages >= self.num_layers:
            for norm in (self.norm, self.fc_norm):
                if norm is not None:
                    yield norm

    def _freeze_stages(self) -> None:
        for param in (self.cls_token, self.mask_token, self.pos_embed):
            if param is not None:
                param.requires_grad = False
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'BEiT':
        """Set training mode, keeping frozen modules in eval mode."""
        super().train(mode)
        if mode and self.frozen_stages > 0:
            for module in self._frozen_modules():
                module.eval()
        return self

    def embed(self, x: torch.Tensor,
              mask: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch-embed images, replace masked patches, add CLS and positions.

        Args:
            x: ``(B, C_in, H_img, W_img)`` images.
            mask: ``(B, H, W)`` bool on the patch grid (or ``(B, N)``,
                row-major), True where the patch is masked (replaced by the
                mask token).

        Returns:
            ``(B, 1+N, C)`` tokens and the patch grid ``(H, W)``.

        Raises:
            ValueError: a mask of another grid, even with as many patches
                (it would mask the wrong places).
        """
        h_img, w_img = x.shape[-2:]
        if h_img % self.patch_size or w_img % self.patch_size:
            raise ValueError(
                f'input of shape {tuple(x.shape)} has a spatial size '
                f'({h_img}, {w_img}) that is not a multiple of the patch '
                f'size {self.patch_size} (expected e.g. '
                f'{tuple(self.patch_size * g for g in self.patch_grid)})')
        x = self.patch_embed(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError('a mask was passed but the backbone has no '
                                 'mask token (use_mask_token=False)')
            if mask.dim() == 3 and tuple(mask.shape[1:]) != grid:
                raise ValueError(
                    f'mask of shape {tuple(mask.shape)} is not on the '
                    f'{grid} patch grid of the {h_img} x {w_img} px input: '
                    'make the mask generator\'s input_size that grid')
            mask = mask.reshape(mask.shape[0], -1)
            if mask.shape != x.shape[:2]:
                raise ValueError(
                    f'mask of shape {tuple(mask.shape)} does not match the '
                    f'{tuple(x.shape[:2])} (batch, patches) of the input')
            weight = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - weight) + self.mask_token.to(x.dtype) * weight
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, grid, self.patch_grid)
        return self.pos_drop(x), grid

    def patch_grid_of(self, images: torch.Tensor) -> Tuple[int, int]:
        """The patch grid ``(H, W)`` that :meth:`forward` makes of
        ``images`` ``(B, C_in, H_img, W_img)``."""
        return (images.shape[-2] // self.patch_size,
                images.shape[-1] // self.patch_size)

    def shared_bias(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """The shared relative position bias every block adds on ``grid``
        (the table resized to it), or None without one
        (``use_shared_rel_pos_bias=False``)."""
        return self.rel_pos_bias(grid) if self.rel_pos_bias is not None \
            else None

    def neck_inputs(self, images: torch.Tensor
                    ) -> Tuple[Tuple[int, int], Optional[torch.Tensor]]:
        """What a neck that continues this backbone's blocks (BEiT v2's
        patch aggregation) needs besides :meth:`forward`'s outputs for
        ``images``: their patch grid and the shared relative position bias
        on it (:meth:`patch_grid_of`, :meth:`shared_bias`)."""
        grid = self.patch_grid_of(images)
        return grid, self.shared_bias(grid)

    def forward(self,
                x: torch.Tensor,
                mask: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, ...]:
        """Args:
            x: ``(B, C_in, H_img, W_img)``; sides multiples of the patch size.
            mask: optional ``(B, N)`` / ``(B, H, W)`` bool, True = masked.
            rows: optional ``(B, R)`` long indices into the ``1+N`` tokens
                (CLS is 0): the last block computes these rows only (see
                :meth:`Block.forward`), and the last output is ``(B, R, C)``.
                Needs ``out_type='raw'``; pretraining passes the CLS and
                the masked patches, the only rows its losses read.

        Returns:
            One output per ``out_indices`` entry, shaped by ``out_type``:
            ``(B, 1+N, C)``, ``(B, C)`` or ``(B, C, H, W)``.
        """
        if rows is not None and self.out_type != 'raw':
            raise ValueError(f'rows need out_type=\'raw\', not '
                             f'{self.out_type!r}')
        return self._run_blocks(x, mask, chosen=(), rows=rows)[0]

    def forward_with_attention(
        self,
        x: torch.Tensor,
        layers: Union[int, Sequence[int], None] = None,
        mask: Optional[torch.Tensor] = None
    ) -> Tuple[Tuple[torch.Tensor, ...], Dict[int, torch.Tensor]]:
        """:meth:`forward`, with the blocks in ``layers`` forming their
        attention weights explicitly and returning them.

        :meth:`forward` never returns the weights (its attention is
        ``F.scaled_dot_product_attention`` but for CPU training, see
        ``Attention._explicit``); this runs the same blocks, the
        chosen ones through :meth:`Block.forward_with_attention`, the others
        fused. For inspection (the chosen blocks never checkpointed).

        Args:
            x: ``(B, C_in, H_img, W_img)``, as :meth:`forward`.
            layers: block indices (negative counts from the end), as
                ``out_indices``; None for every block.
            mask: as :meth:`forward`.

        Returns:
            The outputs of :meth:`forward` (to rounding) and a dict from
            each chosen block's index (``0 .. num_layers - 1``) to its
            ``(B, heads, 1+N, 1+N)`` float32 attention weights, CLS first;
            row ``q`` is query token ``q``'s distribution over the keys.
        """
        chosen = self._normalise_out_indices(
            range(self.num_layers) if layers is None else layers,
            self.num_layers, 'layers')
        return self._run_blocks(x, mask, chosen)

    def _run_blocks(
        self, x: torch.Tensor, mask: Optional[torch.Tensor],
        chosen: Sequence[int], rows: Optional[torch.Tensor] = None
    ) -> Tuple[Tuple[torch.Tensor, ...], Dict[int, torch.Tensor]]:
        """Embed ``x`` ``(B, C_in, H_img, W_img)`` and run the blocks: the
        outputs of ``out_indices`` and the ``(B, heads, 1+N, 1+N)``
        attention weights of the ``chosen`` blocks (explicit softmax there,
        fused attention elsewhere); the last block on ``rows`` only, if
        given (never with ``chosen``: :meth:`forward` passes rows)."""
        x, grid = self.embed(x, mask)
        shared_bias = self.shared_bias(grid)
        outs, maps = [], {}
        for i, block in enumerate(self.blocks):
            last_rows = rows if i == self.num_layers - 1 else None
            if i in chosen:
                x, maps[i] = block.forward_with_attention(x, grid, shared_bias)
            elif self.with_cp and self.training and x.requires_grad:
                x = checkpoint(block, x, grid, shared_bias, last_rows,
                               use_reentrant=False)
            else:
                x = block(x, grid, shared_bias, last_rows)
            if i == self.num_layers - 1 and self.norm is not None:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, grid))
        return tuple(outs), maps

    def attention_maps(self,
                       x: torch.Tensor,
                       layers: Union[int, Sequence[int], None] = None,
                       mask: Optional[torch.Tensor] = None
                       ) -> Dict[int, torch.Tensor]:
        """The attention weights of :meth:`forward_with_attention` alone:
        ``{block index: (B, heads, 1+N, 1+N)}``."""
        return self.forward_with_attention(x, layers, mask)[1]

    def _format_output(self, x: torch.Tensor,
                       grid: Tuple[int, int]) -> torch.Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, 1:]
        if self.out_type == 'featmap':
            return patches.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return self.fc_norm(patches.mean(dim=1))

    def _load_hook(self, state_dict: Dict, prefix: str, *args,
                   **kwargs) -> None:
        """Pre-hook of ``load_state_dict``: adapt the checkpoint, then refuse
        one of another width or depth."""
        self.adapt_state_dict(state_dict, prefix)
        self._check_compatible(state_dict, prefix)

    def adapt_state_dict(self, state_dict: Dict, prefix: str = '',
                         *args, **kwargs) -> None:
        """Adapt the checkpoint entries under ``prefix`` in place to this
        model (see the class docstring): index buffers dropped, a shared
        relative position bias expanded per block, position tables
        resized. Loading does this itself; converters call it to see a
        checkpoint as loading will."""
        for key in [k for k in state_dict if k.startswith(prefix)
                    and k.endswith('relative_position_index')]:
            del state_dict[key]
        shared = prefix + 'rel_pos_bias.relative_position_bias_table'
        if shared in state_dict and self.rel_pos_bias is None:
            table = state_dict.pop(shared)
            if self.blocks[0].attn.window:
                for i in range(self.num_layers):
                    state_dict.setdefault(
                        f'{prefix}blocks.{i}.attn.relative_position_bias_table',
                        table.clone())
        pos_key = prefix + 'pos_embed'
        if self.pos_embed is not None and pos_key in state_dict and \
                state_dict[pos_key].shape != self.pos_embed.shape:
            state_dict[pos_key] = resize_pos_embed(state_dict[pos_key],
                                                   self.patch_grid)
        for key in [k for k in state_dict if k.startswith(prefix)
                    and k.endswith('relative_position_bias_table')]:
            table = state_dict[key]
            rows = (2 * self.patch_grid[0] - 1) * (
                2 * self.patch_grid[1] - 1) + 3
            if table.ndim == 2 and table.shape[0] != rows:
                state_dict[key] = resize_relative_position_table(
                    table, self.patch_grid, infer_window(table.shape[0]))

    def _check_compatible(self, state_dict: Dict, prefix: str) -> None:
        """Refuse an (adapted) checkpoint of another width or depth.

        ``load_state_dict(strict=False)``, which MMEngine's ``Pretrained``
        init uses, only warns about size mismatches and missing keys and so
        would leave such weights silently random. A state dict without any key
        under ``prefix`` is not checked (a whole sub-module left out, e.g. the
        decoder of an encoder-only tokenizer file). Keys of optional parts
        that this model lacks or has (mask token, norms, position tables) are
        left to the usual missing/unexpected-key warnings.

        Raises:
            ValueError: naming the first key (in this model's order) whose
                checkpoint shape differs from the model's, with both shapes;
                else the first key of a block the checkpoint lacks; else the
                first key of a block this model does not have.
        """
        incoming = [k[len(prefix):] for k in state_dict
                    if k.startswith(prefix)]
        if not incoming:
            return
        own = self.state_dict()
        for key, value in own.items():
            theirs = state_dict.get(prefix + key)
            if isinstance(theirs, torch.Tensor) and \
                    theirs.shape != value.shape:
                raise ValueError(
                    f'{prefix}{key}: checkpoint shape {tuple(theirs.shape)} '
                    f'vs model shape {tuple(value.shape)}')
        # (per-block relative position tables may have been copied from a
        # shared one above: they say nothing about the checkpoint's depth)
        blocks = {int(k.split('.')[1]) for k in incoming
                  if re.match(r'blocks\.\d+\.', k)
                  and not k.endswith('relative_position_bias_table')}
        if blocks:
            for key in own:
                match = re.match(r'blocks\.(\d+)\.', key)
                if match and int(match.group(1)) not in blocks:
                    raise ValueError(
                        f'{prefix}{key}: missing from the checkpoint, which '
                        f'has {len(blocks)} blocks (max index {max(blocks)}) '
                        f'where the model has {self.num_layers}')
            for key in incoming:
                match = re.match(r'blocks\.(\d+)\.', key)
                if match and int(match.group(1)) >= self.num_layers:
                    raise ValueError(
                        f'{prefix}{key}: unexpected, the checkpoint has '
                        f'{max(blocks) + 1} blocks where the model has '
                        f'{self.num_layers}')
