"""What MMPretrain's APIs leave out for our models.

* :func:`register_model_index` makes our configs known by name to
  MMPretrain's model hub (``mmpretrain.list_models``, ``get_model(NAME)``,
  ``inference_model``, the inferencers), through MMPretrain's public
  ``ModelHub.register_model_index``: MMPretrain itself reads only its own
  package's ``.mim/model-index.yml``.
* :func:`extract_features` returns chosen blocks of the BEiT backbone of an
  already built model (classifier, pretrainer or segmentor). MMPretrain's
  ``FeatureExtractor`` returns the blocks the config names, and picks others
  only by building the model again.
* :func:`count_flops` is MMEngine's FLOP count (what MMPretrain's and
  MMSegmentation's ``get_flops`` tools print) with attention included:
  MMEngine 0.10 has no handle for ``aten::scaled_dot_product_attention``, so
  it leaves our attention out (715M of ViT-B/16's 17.58G at 224 px).
"""
from math import prod
from typing import Any, List, Sequence

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmpretrain.apis import ModelHub
from modelindex.load_model_index import load
from torch import nn

from beit_plugin.models.backbones import BEiT
from beit_plugin.package_files import MIM_DIR


def register_model_index() -> List[str]:
    """Add our models to MMPretrain's model hub, once per process.

    The index is the package's ``.mim/model-index.yml``; its config paths are
    resolved against ``.mim``, so the names work from any working directory
    (data and checkpoint paths inside the configs stay relative to it).

    Returns:
        Our model names (lower case), sorted.
    """
    path = MIM_DIR / 'model-index.yml'
    names = sorted(model.name.lower() for model in load(str(path)).models)
    # MMPretrain refuses a name registered twice
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(path, config_prefix=path.parent)
    return names


def extract_features(model: nn.Module, images: torch.Tensor,
                     layers: Sequence[int],
                     out_type: str = 'featmap') -> List[torch.Tensor]:
    """Outputs of chosen blocks of a model's BEiT backbone, without grad.

    The backbone runs once with ``layers`` as its ``out_indices``, in the
    model's current mode (``model.eval()`` turns drop path off); its own
    ``out_indices`` and ``out_type`` are restored afterwards. The last block's
    output is taken after the final norm where the backbone has one
    (``final_norm=True``), as the backbone returns it.

    Args:
        model: our :class:`~beit_plugin.models.backbones.BEiT`, or a model
            holding one as ``model.backbone`` (``ImageClassifier``,
            ``BEiTPretrainer``, MMSegmentation's ``EncoderDecoder``).
        images: ``(B, 3, H, W)``, normalised as the model's data preprocessor
            does; ``H`` and ``W`` multiples of the patch size ``p``.
        layers: block indices, from 0; negative ones count from the end.
        out_type: ``'featmap'``: the patch tokens as ``(B, C, H/p, W/p)``;
            ``'raw'``: all tokens, CLS first, as ``(B, 1 + H/p * W/p, C)``.

    Returns:
        One tensor per entry of ``layers``, in that order.
    """
    backbone = getattr(model, 'backbone', model)
    if not isinstance(backbone, BEiT):
        raise TypeError(f'{type(backbone).__module__}.'
                        f'{type(backbone).__name__} is not beit_plugin.BEiT')
    if out_type not in ('featmap', 'raw'):
        raise ValueError(f"out_type must be 'featmap' or 'raw', not "
                         f'{out_type!r}')
    wanted = BEiT._normalise_out_indices(layers, backbone.num_layers)
    blocks = tuple(sorted(set(wanted)))  # the order the backbone returns
    saved = backbone.out_indices, backbone.out_type
    backbone.out_indices, backbone.out_type = blocks, out_type
    try:
        with torch.no_grad():
            outputs = dict(zip(blocks, backbone(images)))
    finally:
        backbone.out_indices, backbone.out_type = saved
    return [outputs[index] for index in wanted]


def attention_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOP handle of ``aten::scaled_dot_product_attention`` for MMEngine's
    analyzers: ``q @ k^T`` and ``weights @ v`` as the two matmuls they are,
    counted as MMEngine counts a matmul (multiply-adds).

    Args:
        inputs: the op's traced inputs; ``q`` ``(..., N, d)``, ``k``
            ``(..., M, d)``, ``v`` ``(..., M, d_v)`` come first.
        outputs: unused.
    """
    query, key, value = (get_shape(v) for v in inputs[:3])
    tokens = key[-2]
    return prod(query) * tokens + prod(query[:-1]) * tokens * value[-1]


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs (multiply-adds) of ``model(inputs)``, attention included.

    Args:
        model: any module, e.g. a classifier's ``backbone``, or a segmentor
            (whose ``forward(inputs)`` returns the decode head's logits).
        inputs: ``(B, 3, H, W)``; the count is for the whole batch.
    """
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(
        'aten::scaled_dot_product_attention', attention_flops)
    # the element-wise ops it does not count are listed at warning level
    # on every call; the matmuls, linears and convolutions are all counted
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total()
