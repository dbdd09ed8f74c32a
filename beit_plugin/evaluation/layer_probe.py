"""How linearly separable each block's frozen features are: BEiT v1's
layer-wise linear probe, done offline in one go.

Every block's CLS token and average patch token are read in a single
forward pass of the frozen backbone, and a multinomial logistic regression
is fitted to each by full-batch L-BFGS. This takes about a minute for the
demo's 1600 + 320 images and 6 blocks on 2 CPU cores, where one
``configs/linear_probe`` run (one block, one token, SGD through the Runner)
takes three.

The dense variant probes segmentation: every patch token against its
patch's majority label (:func:`patch_labels`), classes weighted equally.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..models.backbones import BEiT
from ..progress import track


@torch.no_grad()
def block_features(backbone: BEiT,
                   images: torch.Tensor,
                   batch_size: int = 256,
                   dense: bool = False) -> Dict[str, torch.Tensor]:
    """Frozen features of every block the backbone outputs.

    Args:
        backbone: A BEiT with ``out_type='raw'``; its ``out_indices`` are the
            blocks read. It is put in eval mode.
        images: ``(M, 3, H, W)`` normalised images.
        batch_size: Images per forward pass.
        dense: Return every patch token instead of the CLS and mean token.

    Returns:
        ``{'block<i> cls': (M, C), 'block<i> avg': (M, C), ...}`` for each
        output block ``i`` (1-based, in ``out_indices`` order): the CLS
        token and the mean of the patch tokens. With ``dense``,
        ``{'block<i> patch': (M * N, C), ...}``: the ``N`` patch tokens of
        each image in turn, in raster order.
    """
    if backbone.out_type != 'raw':
        raise ValueError('block_features needs a backbone with '
                         f"out_type='raw', got {backbone.out_type!r}")
    backbone.eval()
    names = [f'block{index + 1}' for index in backbone.out_indices]
    chunks: Dict[str, List[torch.Tensor]] = {}
    for i in track(range(0, len(images), batch_size), 'block features'):
        # reduce each block's (b, 1+N, C) tokens at once: (b, C) kept, or
        # the (b * N, C) patch tokens when dense
        for name, tokens in zip(names, backbone(images[i:i + batch_size])):
            if dense:
                chunks.setdefault(f'{name} patch', []).append(
                    tokens[:, 1:].flatten(0, 1))
                continue
            chunks.setdefault(f'{name} cls', []).append(tokens[:, 0])
            chunks.setdefault(f'{name} avg', []).append(
                tokens[:, 1:].mean(dim=1))
    return {key: torch.cat(parts) for key, parts in chunks.items()}


def patch_labels(seg_maps: torch.Tensor,
                 patch_size: int,
                 ignore_index: int = 255,
                 min_labelled: float = 0.5) -> torch.Tensor:
    """The majority label of every patch of segmentation maps.

    Args:
        seg_maps: ``(M, H, W)`` integer labels, ``ignore_index`` where
            unlabelled; ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: Side of a patch in pixels.
        ignore_index: The unlabelled value, in and out.
        min_labelled: A patch whose labelled pixels are fewer than this
            fraction of it gets ``ignore_index``.

    Returns:
        ``(M, N)`` labels, ``N = (H / patch_size) * (W / patch_size)`` in
        raster order; a tie goes to the smaller label.
    """
    m, height, width = seg_maps.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f'segmentation maps of {height} x {width} px do not '
                         f'split into {patch_size} px patches')
    patches = seg_maps.reshape(m, height // patch_size, patch_size,
                               width // patch_size, patch_size)
    patches = patches.permute(0, 1, 3, 2, 4).flatten(1, 2).flatten(2)
    labelled = patches != ignore_index
    num_classes = int(patches[labelled].max()) + 1 if labelled.any() else 1
    # per-patch label histograms, (M, N, K): one bincount over patch * K +
    # label of the labelled pixels (no (M, N, P, K) one-hot)
    n = patches.shape[1]
    patch_index = torch.arange(m * n).view(m, n, 1).expand_as(patches)
    counts = torch.bincount((patch_index * num_classes + patches)[labelled],
                            minlength=m * n * num_classes)
    labels = counts.view(m, n, num_classes).argmax(dim=2)
    labels[labelled.sum(dim=2) < min_labelled * patch_size**2] = ignore_index
    return labels


def fit_logistic_probe(train_x: torch.Tensor,
                       train_y: torch.Tensor,
                       val_x: torch.Tensor,
                       val_y: torch.Tensor,
                       num_classes: int,
                       weight_decay: float = 1e-3,
                       max_iter: int = 200,
                       balanced: bool = False) -> float:
    """Fit a linear classifier on standardised features; its val top-1.

    The features are standardised with the training set's per-channel mean
    and standard deviation (the linear probe's BatchNorm without affine
    parameters), then a weight ``(C, K)`` and bias ``(K,)`` minimise the
    cross-entropy plus ``weight_decay`` times the squared weight norm by
    full-batch L-BFGS (strong Wolfe line search), from zeros, so the result
    is deterministic.

    With ``balanced`` (for dense probes, where the background outnumbers
    every object class), each class weighs in the cross-entropy in inverse
    proportion to its training count, and the result is the mean over the
    classes present in ``val_y`` of their accuracy (mean class accuracy).

    Args:
        train_x: ``(M, C)`` training features.
        train_y: ``(M,)`` integer labels in ``[0, num_classes)``.
        val_x: ``(V, C)`` validation features.
        val_y: ``(V,)`` validation labels.
        num_classes: Number of classes ``K``.
        weight_decay: L2 penalty on the weight.
        max_iter: L-BFGS iterations.
        balanced: Weight and score the classes equally (see above).

    Returns:
        Validation top-1 (or mean class) accuracy in percent.
    """
    for name, x, y in (('train', train_x, train_y), ('val', val_x, val_y)):
        if x.dim() != 2 or y.shape != x.shape[:1]:
            raise ValueError(f'{name} features must be (M, C) with (M,) '
                             f'labels, got {tuple(x.shape)} and '
                             f'{tuple(y.shape)}')
    if val_x.shape[1] != train_x.shape[1]:
        raise ValueError(f'train features have {train_x.shape[1]} channels '
                         f'but val features {val_x.shape[1]}')
    train_x, val_x = train_x.double(), val_x.double()
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x = (train_x - mean) / std
    val_x = (val_x - mean) / std
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64,
                         requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    # the weighted mean cross-entropy divides by the targets' total weight,
    # so inverse counts need no normalising
    class_weight = 1 / torch.bincount(
        train_y, minlength=num_classes).double().clamp(min=1) \
        if balanced else None
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter,
                                  line_search_fn='strong_wolfe')

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y,
                               weight=class_weight) + \
            weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        correct = ((val_x @ weight + bias).argmax(1) == val_y).double()
    if not balanced:
        return 100.0 * correct.mean().item()
    per_class = [correct[val_y == c].mean() for c in val_y.unique()]
    return 100.0 * torch.stack(per_class).mean().item()
