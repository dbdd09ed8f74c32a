"""Pictures of masked image modeling during training: masked input, target
and predicted tokens, through MMEngine's visualizer."""
import math
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from beit_plugin.registry import HOOKS
from beit_plugin.visualization import (BACKGROUND, as_uint8_image,
                                       overlay_mask, token_colours)

PAD = 2  # px of white between panels and rows
TEXT_HEIGHT = 16  # px of a line of text
#: BGR fills of the right / wrong panel, and of patches nobody predicts
RIGHT = (0, 170, 0)
WRONG = (0, 0, 220)
UNMASKED = (200, 200, 200)
#: masked patches of the input: mixed with this grey, with this weight
MASKED_GREY = (128, 128, 128)
MASKED_ALPHA = 0.7
#: per-patch standardised pixels ``v`` are drawn as ``128 + PIXEL_GAIN * v``
PIXEL_GAIN = 48


def first_images(data_batch: dict, num: int) -> dict:
    """The first ``num`` samples of a default-collated pretraining batch:
    ``inputs`` a list of views (each ``(B, 3, H, W)``), ``data_samples`` a
    list."""
    inputs = data_batch['inputs']
    views = [view[:num] for view in inputs] if isinstance(
        inputs, (list, tuple)) else inputs[:num]
    return dict(data_batch, inputs=views,
                data_samples=list(data_batch['data_samples'][:num]))


def _put_text(canvas: np.ndarray, text: str, left: int, top: int) -> None:
    """Black text whose line starts at ``(left, top)`` of ``canvas``."""
    cv2.putText(canvas, text, (left, top + TEXT_HEIGHT - 4),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)


def _fill_grid(values: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(h, w, 3)`` uint8 per-patch colours stretched to ``size`` =
    ``(height, width)``, each patch one block."""
    return cv2.resize(values, (size[1], size[0]),
                      interpolation=cv2.INTER_NEAREST)


def _pixels_picture(patches: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """``(N, p * p * 3)`` per-patch standardised RGB pixels (pixel-major,
    channel innermost, :class:`~beit_plugin.models.targets.PatchPixels`) ->
    BGR ``(h * p, w * p, 3)`` uint8, ``128 + PIXEL_GAIN * value``."""
    h, w = grid
    p = math.isqrt(patches.shape[1] // 3)
    img = patches.reshape(h, w, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(
        h * p, w * p, 3)
    img = np.clip(128 + PIXEL_GAIN * img, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(img[..., ::-1])


def _grey_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with its masked patches greyed (:data:`MASKED_GREY`,
    weight :data:`MASKED_ALPHA`) and outlined in black, visible whatever
    the image's colours."""
    out = overlay_mask(image, mask, alpha=MASKED_ALPHA, tint=MASKED_GREY)
    p_h = image.shape[0] // mask.shape[0]
    p_w = image.shape[1] // mask.shape[1]
    for row, col in np.argwhere(mask):
        cv2.rectangle(out, (int(col) * p_w, int(row) * p_h),
                      ((int(col) + 1) * p_w - 1, (int(row) + 1) * p_h - 1),
                      (0, 0, 0), 1)
    return out


def mim_panels(image: np.ndarray, mask: np.ndarray, target: np.ndarray,
               pred: np.ndarray, scale: int) -> Dict[str, np.ndarray]:
    """The pictures of one training image, BGR uint8, each the image's size
    times ``scale``.

    Args:
        image: ``(H, W, 3)`` BGR view the backbone saw, unmasked.
        mask: ``(h, w)`` bool patch mask, True = masked.
        target: ``(h, w)`` token ids, or ``(N, D)`` standardised pixels.
        pred: the same shape as ``target``: predicted ids or pixels.
        scale: enlargement factor.

    Returns:
        ``input, masked`` (masked patches greyed and outlined),
        ``target`` (one fixed colour per token id, as
        ``tools/visualize_tokens.py`` draws them), ``prediction`` (the
        masked patches only; the others grey) and, for tokens,
        ``right / wrong`` (green / red at masked patches).
    """
    size = (image.shape[0] * scale, image.shape[1] * scale)
    big = cv2.resize(as_uint8_image(image), (size[1], size[0]),
                     interpolation=cv2.INTER_NEAREST)
    panels = {'input, masked': _grey_out(big, mask)}
    blocks = _fill_grid(mask.astype(np.uint8)[..., None].repeat(3, -1) * 255,
                        size).astype(bool)
    grey = np.empty(size + (3, ), np.uint8)
    grey[:] = UNMASKED
    if target.ndim == 2 and target.shape == mask.shape:  # token ids
        panels['target'] = _fill_grid(token_colours(target), size)
        panels['prediction'] = np.where(
            blocks, _fill_grid(token_colours(pred), size), grey)
        verdict = np.where((pred == target)[..., None], np.uint8(RIGHT),
                           np.uint8(WRONG)).astype(np.uint8)
        panels['right / wrong'] = np.where(blocks, _fill_grid(verdict, size),
                                           grey)
    else:  # pixels
        panels['target'] = cv2.resize(
            _pixels_picture(target, mask.shape), (size[1], size[0]),
            interpolation=cv2.INTER_NEAREST)
        panels['prediction'] = np.where(
            blocks,
            cv2.resize(_pixels_picture(pred, mask.shape), (size[1], size[0]),
                       interpolation=cv2.INTER_NEAREST), grey)
    return panels


def score_text(mask: np.ndarray, target: np.ndarray,
               pred: np.ndarray) -> str:
    """One image's score at its masked patches: token accuracy, or the
    pixels' mean squared error."""
    masked = int(mask.sum())
    if masked == 0:
        return 'no masked patch'
    if target.ndim == 2 and target.shape == mask.shape:
        right = int((pred == target)[mask].sum())
        return (f'{right} of {masked} masked tokens right '
                f'({100 * right / masked:.1f}%)')
    flat = mask.reshape(-1)
    mse = float(((pred[flat] - target[flat])**2).mean())
    return f'pixel MSE {mse:.3f} over {masked} masked patches'


def mim_picture(images: List[np.ndarray], outputs: Dict[str, np.ndarray],
                grid: Sequence[int], scale: int) -> np.ndarray:
    """The BGR picture of several training images: a header naming the
    columns, then per image a line of text (its index and score) and a row
    of :func:`mim_panels`.

    Args:
        images: ``(H, W, 3)`` BGR views, unmasked.
        outputs: numpy ``mask`` ``(B, N)``, ``target`` and ``pred``
            (``(B, N)`` ids or ``(B, N, D)`` pixels) of
            :meth:`~beit_plugin.models.algorithms.BEiTPretrainer.predict_masked`.
        grid: ``(h, w)`` patches, ``h * w = N``.
        scale: enlargement factor of each panel.
    """
    rows = []
    for index, image in enumerate(images):
        mask = outputs['mask'][index].reshape(grid)
        target, pred = outputs['target'][index], outputs['pred'][index]
        if target.ndim == 1:  # token ids
            target, pred = target.reshape(grid), pred.reshape(grid)
        panels = mim_panels(image, mask, target, pred, scale)
        rows.append((f'#{index}: {score_text(mask, target, pred)}', panels))
    names = list(rows[0][1])
    cell_h, cell_w = rows[0][1][names[0]].shape[:2]
    width = len(names) * (cell_w + PAD) + PAD
    height = TEXT_HEIGHT + len(rows) * (TEXT_HEIGHT + cell_h + PAD) + PAD
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for col, name in enumerate(names):
        _put_text(canvas, name, PAD + col * (cell_w + PAD), 0)
    top = TEXT_HEIGHT
    for text, panels in rows:
        _put_text(canvas, text, PAD, top)
        top += TEXT_HEIGHT
        for col, name in enumerate(names):
            left = PAD + col * (cell_w + PAD)
            canvas[top:top + cell_h, left:left + cell_w] = panels[name]
        top += cell_h + PAD
    return canvas


@HOOKS.register_module()
class MIMVisualizationHook(Hook):
    """Every ``interval`` training iterations, draw what masked image
    modeling sees and predicts for the first ``num_images`` images of the
    batch, and hand the picture to the runner's visualizer
    (``visualizer.add_image``): it lands in every ``vis_backends`` of the
    config, ``LocalVisBackend`` as ``<work_dir>/<timestamp>/vis_data/
    vis_image/<name>_<iteration>.png``, ``TensorboardVisBackend`` in its
    events file.

    Per image, one row: the view the backbone saw with the masked patches
    greyed and outlined; the target token map (one fixed colour per token
    id, as ``tools/visualize_tokens.py`` draws them); the predicted token map
    at the masked patches (argmax of the head's logits, others grey); right
    / wrong at the masked patches (green / red); above it, the image's
    token accuracy at the masked patches. With pixel targets
    (:class:`~beit_plugin.models.targets.PatchPixels`), the target and
    predicted patches (per-patch standardised values ``v`` drawn as
    ``128 + 48 v``) and the mean squared error.

    The predictions come from
    :meth:`~beit_plugin.models.algorithms.BEiTPretrainer.predict_masked`:
    one more forward pass of those images in eval mode without gradients
    (no dropout, no drop path, no random numbers drawn), at the drawing
    iterations only, on the main process only; the training step itself is
    unchanged. Off unless a config adds it::

        custom_hooks = [dict(type='beit_plugin.MIMVisualizationHook',
                             interval=100)]

    Args:
        interval (int): draw every ``interval`` training iterations (after
            iterations ``interval``, ``2 * interval`` ...). Defaults to 500.
        num_images (int): images of the batch to draw (fewer if the batch
            is smaller). Defaults to 4.
        scale (int, optional): enlarge each panel this many times. Defaults
            to the smallest factor that makes the image at least 128 px.
        name (str): image name in the visualizer. Defaults to ``'mim'``.
    """
    priority = 'LOW'

    def __init__(self, interval: int = 500, num_images: int = 4,
                 scale: Optional[int] = None, name: str = 'mim') -> None:
        if interval < 1:
            raise ValueError(f'interval must be positive, got {interval}')
        if num_images < 1:
            raise ValueError(
                f'num_images must be positive, got {num_images}')
        if scale is not None and scale < 1:
            raise ValueError(f'scale must be positive, got {scale}')
        self.interval = interval
        self.num_images = num_images
        self.scale = scale
        self.name = name

    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(
            runner.model) else runner.model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        if not callable(getattr(model, 'predict_masked', None)):
            raise TypeError(
                f'MIMVisualizationHook draws masked image modeling, but '
                f'{type(model).__name__} has no predict_masked method: use '
                'it with beit_plugin.BEiTPretrainer')

    def draw(self, model: torch.nn.Module, data_batch: dict) -> np.ndarray:
        """The RGB picture (:func:`mim_picture`) of the first
        ``num_images`` images of ``data_batch`` (as the dataloader gives
        it), every module of ``model`` left in the mode it was in."""
        batch = first_images(data_batch, self.num_images)
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                data = model.data_preprocessor(batch, False)
                outputs = model.predict_masked(data['inputs'],
                                               data['data_samples'])
        finally:
            for module, training in modes:
                module.training = training
        outputs = {
            key: value.detach().float().cpu().numpy()
            if value.is_floating_point() else value.detach().cpu().numpy()
            for key, value in outputs.items()
        }
        # view 1 as loaded: BGR, as OpenMMLab's LoadImageFromFile gives it
        images = [
            as_uint8_image(view.detach().cpu().numpy().transpose(1, 2, 0))
            for view in batch['inputs'][0]
        ]
        scale = self.scale or max(
            1, math.ceil(128 / max(images[0].shape[:2])))
        grid = tuple(np.asarray(batch['data_samples'][0].mask).shape)
        return np.ascontiguousarray(
            mim_picture(images, outputs, grid, scale)[..., ::-1])

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if data_batch is None or not is_main_process() or \
                not self.every_n_train_iters(runner, self.interval):
            return
        picture = self.draw(self._model(runner), data_batch)
        runner.visualizer.add_image(self.name, picture, step=runner.iter + 1)
