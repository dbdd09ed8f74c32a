"""BEiT v1 / v2 masked image modeling: the algorithm that ties the parts."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.structures import DataSample
from torch import nn

from beit_plugin.models.backbones.transformer_block import gather_rows
from beit_plugin.registry import MODELS
from .masked_rows import start_masked_rows


def _build(cfg: Union[dict, nn.Module, None]) -> Optional[nn.Module]:
    """Build a part from our registry. MMEngine still looks an unscoped type
    up in the current default scope: under MMPretrain's APIs (scope
    ``mmpretrain``) ``type='BEiT'`` is MMPretrain's algorithm, hence our
    configs' ``type='beit_plugin.BEiT'``."""
    if cfg is None or isinstance(cfg, nn.Module):
        return cfg
    return MODELS.build(cfg)


_TOKENIZER_ADVICE = (
    'use a tokenizer made for the backbone\'s grid and point '
    'model.target_generator (its init_cfg.checkpoint, and a VQ-KD encoder\'s '
    'img_size / patch_size) at it: convert the official VQ-KD (224 px, '
    '16 px patches) or DALL-E weights with tools/convert_checkpoint.py '
    '(--model vqkd / dalle), or train one with a configs/vqkd/ config '
    '(checkpoints/vqkd_demo_hog.pth is the 64 px, 8 px-patch demo\'s)')


def _grid_text(patch_size: int, grid: Sequence[int], what: str) -> str:
    """``'224 x 224 px images in 16 px patches -> (14, 14) patches'``."""
    return (f'{grid[0] * patch_size} x {grid[1] * patch_size} px images in '
            f'{patch_size} px patches -> {tuple(grid)} {what}')


@MODELS.register_module()
class BEiTPretrainer(BaseSelfSupervisor):
    """BEiT masked image modeling (v1 and v2 differ only by config).

    The pipeline gives two views of each image and a patch mask. The frozen
    tokenizer (``target_generator``) turns view 2 into visual-token ids with
    no gradient; the backbone sees view 1 with masked patches replaced by its
    mask token; the head predicts the ids of the masked patches. With a
    ``neck`` (BEiT v2's patch aggregation) the backbone returns an early and
    the last layer, and the aggregation branch adds its own loss term.

    BEiT's pixel-regression ablation swaps the tokenizer for
    :class:`~beit_plugin.models.targets.PatchPixels` (per-patch normalised
    pixels, ``(B, N, D)``) and the head for ``PixelRegressionHead``.

    Args:
        backbone (dict): our ``BEiT`` with ``use_mask_token=True``.
        head (dict): ``BEiTMIMHead`` (``PixelRegressionHead`` with pixels).
        target_generator (dict): a tokenizer with ``get_codebook_indices``
            (VQ-KD for v2, DALL-E / dVAE for v1), loaded from its own
            ``init_cfg`` and kept frozen; or ``PatchPixels``.
        neck (dict, optional): ``BEiTV2PatchAggregation`` for v2.
        data_preprocessor (dict, optional): e.g. MMPretrain's
            ``TwoNormDataPreprocessor`` (view 2 normalised for the tokenizer).
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 target_generator: dict,
                 neck: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            backbone=_build(backbone),
            neck=_build(neck),
            head=_build(head),
            target_generator=_build(target_generator),
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        self.target_generator.requires_grad_(False)
        self.target_generator.eval()
        self._check_second_view_norm()
        self._check_tokenizer_grid()
        self._check_neck_pairing()

    def _check_neck_pairing(self) -> None:
        """Refuse BEiT v2's patch aggregation on a backbone that does not
        hand it what it needs: the neck holds the final norm it shares with
        the main branch, so the backbone has ``final_norm=False``, and it
        reads blocks ``early_layers - 1`` and the last (``out_indices``).

        Raises:
            ValueError: names the backbone arguments to change.
        """
        early = getattr(getattr(self, 'neck', None), 'early_layers', None)
        if early is None:
            return
        wanted = (early - 1, len(self.backbone.blocks) - 1)
        problems = []
        if self.backbone.final_norm:
            problems.append('final_norm=True (the neck holds the final norm: '
                            'set final_norm=False)')
        if tuple(self.backbone.out_indices) != wanted:
            problems.append(f'out_indices={tuple(self.backbone.out_indices)} '
                            f'(the neck reads blocks {wanted}: early_layers '
                            f'- 1 = {early - 1} and the last)')
        if problems:
            raise ValueError(
                f'{type(self.neck).__name__}(early_layers={early}) needs '
                'another backbone: ' + '; '.join(problems))

    def _check_second_view_norm(self) -> None:
        """Refuse a data preprocessor whose second normalisation is not the
        one the tokenizer expects (e.g. a v2 preprocessor with DALL-E).

        Raises:
            ValueError: names both mean/std pairs.
        """
        norm = getattr(self.target_generator, 'input_norm', None)
        mean = getattr(self.data_preprocessor, 'second_mean', None)
        std = getattr(self.data_preprocessor, 'second_std', None)
        if norm is None or mean is None or std is None:
            return
        given = (mean.flatten().tolist(), std.flatten().tolist())
        wanted = (list(norm['mean']), list(norm['std']))
        close = all(
            torch.allclose(torch.tensor(g, dtype=torch.float64).expand(3),
                           torch.tensor(w, dtype=torch.float64), rtol=1e-4)
            for g, w in zip(given, wanted))
        if not close:
            raise ValueError(
                f'data_preprocessor second_mean/second_std {given} do not '
                f'match the input_norm mean/std {wanted} of the tokenizer '
                f'{type(self.target_generator).__name__}: set them to the '
                'tokenizer\'s values')

    def _check_tokenizer_grid(self) -> None:
        """Refuse a tokenizer built for another token grid than the
        backbone's patch grid, where the config fixes both (a VQ-KD encoder
        has an ``img_size``; the DALL-E encoder and ``PatchPixels`` follow
        their input, checked in :meth:`loss`).

        Raises:
            ValueError: names both grids and what to do.
        """
        encoder = getattr(self.target_generator, 'encoder', None)
        grid = getattr(encoder, 'patch_grid', None)
        if grid is None or tuple(grid) == tuple(self.backbone.patch_grid):
            return
        tokenizer = _grid_text(encoder.patch_size, grid, 'tokens')
        backbone = _grid_text(self.backbone.patch_size,
                              self.backbone.patch_grid, 'patches')
        raise ValueError(
            f'the tokenizer {type(self.target_generator).__name__} is built '
            f'for {tokenizer} but the backbone for {backbone}; MIM needs one '
            f'target token per patch: {_TOKENIZER_ADVICE}')

    def _check_targets(self, target: torch.Tensor, images: torch.Tensor,
                       target_images: torch.Tensor) -> None:
        """Refuse targets that are not one per backbone patch of this batch
        (shapes only, no device sync).

        Args:
            target: ``(B, N_t)`` token ids (or ``(B, N_t, D)`` pixels).
            images: ``(B, 3, H, W)`` backbone input.
            target_images: ``(B, 3, H_t, W_t)`` the tokenizer's view.

        Raises:
            ValueError: names both grids and what to do.
        """
        p = self.backbone.patch_size
        grid = self.backbone.patch_grid_of(images)
        step = getattr(self.target_generator, 'downsample', None) or \
            getattr(self.target_generator, 'patch_size', None)
        token_grid = None if step is None else (
            target_images.shape[2] // step, target_images.shape[3] // step)
        if target.shape[1] == grid[0] * grid[1] and \
                token_grid in (None, grid):
            return
        view = f'{target_images.shape[2]} x {target_images.shape[3]} px view'
        if step is not None:
            view += f' in {step} px patches -> {token_grid} tokens'
        raise ValueError(
            f'targets of shape {tuple(target.shape)} from the tokenizer '
            f'{type(self.target_generator).__name__} (its {view}) do not '
            f'match the backbone\'s {(images.shape[0], grid[0] * grid[1])} '
            f'(batch, patches) (its {_grid_text(p, grid, "patches")}): set '
            'the pipeline\'s second_size so that the tokenizer sees the '
            f'backbone\'s grid, or {_TOKENIZER_ADVICE}')

    def train(self, mode: bool = True) -> 'BEiTPretrainer':
        """Set training mode; the tokenizer always stays in eval mode."""
        super().train(mode)
        self.target_generator.eval()
        return self

    def extract_feat(self, inputs: torch.Tensor):
        """Backbone features of unmasked images."""
        return self.backbone(inputs)

    def loss(self, inputs: List[torch.Tensor],
             data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Args:
            inputs: ``[view1, view2]``, each ``(B, 3, H, W)``.
            data_samples: each with ``mask`` ``(H_p, W_p)`` bool.

        Returns:
            The head's losses (``loss_mim``...) and ``acc_mim``.
        """
        mask = self._mask(inputs[0], data_samples)
        if self.backbone.num_layers - 1 not in self.backbone.out_indices:
            target = self._target(inputs)
            feats = self._patch_features(inputs[0], mask)
            return self.head.loss(feats, target, mask.flatten(1))
        # the last blocks compute only the rows the losses read; their count
        # travels to the host while the device runs the tokenizer
        pending_rows = start_masked_rows(mask.flatten(1))
        target = self._target(inputs)
        rows, scored = pending_rows()
        feats = self._patch_features(inputs[0], mask, rows)
        return self.head.loss(feats, gather_rows(target, rows[:, 1:] - 1),
                              scored)

    @staticmethod
    def _mask(images: torch.Tensor,
              data_samples: List[DataSample]) -> torch.Tensor:
        """The ``(B, H_p, W_p)`` bool mask of ``data_samples`` on the device
        of ``images``; the backbone refuses a mask of another grid, even one
        with as many patches."""
        return torch.stack([
            torch.as_tensor(sample.mask) for sample in data_samples
        ]).to(images.device).bool()

    def _target(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """The targets of view 2 (no gradient), checked against view 1's
        grid."""
        images, target_images = inputs[0], inputs[1]
        make_target = getattr(self.target_generator, 'get_codebook_indices',
                              self.target_generator)
        with torch.no_grad():
            target = make_target(target_images)
        self._check_targets(target, images, target_images)
        return target

    def _patch_features(self, images: torch.Tensor, mask: torch.Tensor,
                        rows: Optional[torch.Tensor] = None
                        ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """What the head reads: patch features ``(B, N, C)`` (no CLS) of the
        masked ``images``, or with the neck one such tensor per branch;
        ``(B, R - 1, C)`` for the ``rows`` ``(B, R)`` of
        :func:`masked_rows`, which the last blocks compute alone."""
        feats = self.backbone(images, mask, rows)
        if self.with_neck:
            feats = self.neck(feats, *self.backbone.neck_inputs(images),
                              rows=rows)
        else:
            feats = feats[-1][:, 1:]
        return feats

    @torch.no_grad()
    def predict_masked(self, inputs: List[torch.Tensor],
                       data_samples: List[DataSample]
                       ) -> Dict[str, torch.Tensor]:
        """Targets and the head's predictions at every patch, without
        gradients and in the model's current mode: what
        :class:`~beit_plugin.engine.hooks.MIMVisualizationHook` draws.
        It runs the forward pass of :meth:`loss` once more; training never
        calls it.

        Args:
            inputs: ``[view1, view2]``, each ``(B, 3, H, W)``, as
                :meth:`loss` takes them (after the data preprocessor).
            data_samples: each with ``mask`` ``(H_p, W_p)`` bool.

        Returns:
            dict: ``mask`` ``(B, N)`` bool, True = masked; ``target``
            ``(B, N)`` token ids (``(B, N, D)`` pixels); ``pred``, shaped
            as ``target``: the argmax of the head's logits (the regressed
            pixels) of the main branch, which ``acc_mim`` scores. Only the
            masked patches are trained; the others are predicted anyway.
        """
        mask = self._mask(inputs[0], data_samples)
        target = self._target(inputs)
        feats = self._patch_features(inputs[0], mask)
        if not isinstance(feats, torch.Tensor):
            feats = feats[0]
        every = torch.ones(feats.shape[:2], dtype=torch.bool,
                           device=feats.device)
        out = self.head(feats, every).reshape(*feats.shape[:2], -1)
        pred = out.float() if target.is_floating_point() else out.argmax(-1)
        return dict(mask=mask.flatten(1), target=target, pred=pred)
