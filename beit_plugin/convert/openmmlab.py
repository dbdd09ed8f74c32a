"""MMPretrain (``BEiTViT``, ``BEiTPretrainViT``, ``BEiTV2Neck``, ``VQKD``)
and MMSegmentation (``BEiT``) checkpoints: one ViT layout for both."""
from beit_plugin.models.tokenizers import vqkd_from_mmpretrain
from .common import StateDict, under, with_prefix


def vit_from_openmmlab(state_dict: StateDict) -> StateDict:
    """An OpenMMLab BEiT ViT (``layers.N.ln1``, ``layers.N.ffn.layers``,
    ``patch_embed.projection``, final ``ln1``, pooling ``ln2``) -> our
    :class:`BEiT` keys, by the renaming of the VQ-KD converter (whose encoder
    is the same ViT); index buffers dropped."""
    converted = vqkd_from_mmpretrain(with_prefix(state_dict, 'encoder.'))
    return under(converted, 'encoder.')


def beit_from_openmmlab(state_dict: StateDict) -> StateDict:
    """An MMPretrain or MMSegmentation model -> the layout of our models.

    ``backbone.*`` (or a bare backbone state dict) is renamed to our
    backbone's keys; MMPretrain's BEiT v2 ``neck.patch_aggregation.N`` to
    our ``neck.cls_pt_layers.N``; a VQ-KD ``target_generator`` to
    :class:`VQKDTokenizer` keys. Everything else keeps its name: our
    pretraining and classification models use the same ``neck.norm``,
    ``head.cls_head`` and ``head.fc`` (``LinearClsHead``), and our
    segmentation configs the same MMSegmentation neck and decode heads.
    """
    if not any(k.startswith('backbone.') for k in state_dict):
        state_dict = with_prefix(state_dict, 'backbone.')
    out = {k: v for k, v in state_dict.items() if not k.startswith(
        ('backbone.', 'neck.patch_aggregation.', 'target_generator.'))}
    out.update(with_prefix(
        vit_from_openmmlab(under(state_dict, 'backbone.')), 'backbone.'))
    aggregation = vit_from_openmmlab(with_prefix(
        under(state_dict, 'neck.patch_aggregation.'), 'layers.'))
    out.update(with_prefix(under(aggregation, 'blocks.'),
                           'neck.cls_pt_layers.'))
    tokenizer = under(state_dict, 'target_generator.')
    if any(k.startswith('encoder.') for k in tokenizer):
        tokenizer = vqkd_from_mmpretrain(tokenizer)
    out.update(with_prefix(tokenizer, 'target_generator.'))
    return out
