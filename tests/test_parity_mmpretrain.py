"""MMPretrain's BEiT equals ours once its weights are converted: backbone
features (``BEiTViT``), classifier logits (``ImageClassifier``) and BEiT v2
pretraining logits of both branches (``BEiTPretrainViT`` + ``BEiTV2Neck`` +
``BEiTV2Head`` with a ``VQKD`` target generator). The VQ-KD tokens
themselves: tests/test_vqkd.py::
test_mmpretrain_vqkd_converts_to_identical_token_ids."""
import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import (VQKD, BEiTPretrainViT, BEiTV2Neck, BEiTViT,
                               ImageClassifier)
from mmpretrain.models.heads import BEiTV2Head

from beit_plugin.convert import (convert_state_dict, validate_state_dict,
                                 vqkd_target, with_prefix)
from beit_plugin.models.algorithms import BEiTPretrainer
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers import vqkd_from_mmpretrain
from helpers import TINY_ARCH, randomise

IMG, PATCH, GRID = 32, 8, 4
DIMS = TINY_ARCH['embed_dims']
VOCAB = 40

VARIANTS = {  # (MMPretrain BEiTViT kwargs, ours)
    'shared-bias-final-norm': (
        dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
             final_norm=True, out_type='raw'),
        dict(use_shared_rel_pos_bias=True, final_norm=True, out_type='raw')),
    'per-layer-bias-abs-pos-featmaps': (
        dict(use_rel_pos_bias=True, use_abs_pos_emb=True, final_norm=False,
             out_type='featmap', out_indices=(0, 1)),
        dict(use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
             use_abs_pos_emb=True, final_norm=False, out_type='featmap',
             out_indices=(0, 1))),
    'mean-pooling-no-layer-scale': (
        dict(use_rel_pos_bias=True, layer_scale_init_value=0.,
             out_type='avg_featmap'),
        dict(use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
             layer_scale_init_value=0., final_norm=False,
             out_type='avg_featmap')),
}


def peer_vit(cls=BEiTViT, **kwargs) -> BEiTViT:
    peer = randomise(cls(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                         **kwargs))
    peer.eval()  # (MMPretrain's BaseBackbone.train returns None)
    return peer


def ours(**kwargs) -> BEiT:
    return BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                **kwargs).eval()


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_backbone_equals_beitvit(variant):
    peer_kwargs, our_kwargs = VARIANTS[variant]
    peer = peer_vit(**peer_kwargs)
    model = ours(**our_kwargs)
    model.load_state_dict(convert_state_dict(peer.state_dict(), 'mmpretrain'),
                          strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected, got = peer(x), model(x)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_classifier_equals_mmpretrain_classifier():
    head = dict(type='LinearClsHead', num_classes=5, in_channels=DIMS)
    peer = randomise(ImageClassifier(
        backbone=peer_vit(use_rel_pos_bias=True, out_type='avg_featmap'),
        head=head)).eval()
    model = ImageClassifier(
        backbone=ours(use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                      final_norm=False, out_type='avg_featmap'),
        head=head).eval()
    model.load_state_dict(
        convert_state_dict(peer.state_dict(), 'mmpretrain', layout='model'),
        strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mode='tensor'),
                                   peer(x, mode='tensor'), atol=1e-5, rtol=0)


def peer_vqkd() -> VQKD:
    peer = randomise(VQKD(
        encoder_config=dict(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                            out_type='featmap', final_norm=True,
                            use_abs_pos_emb=True, use_rel_pos_bias=False,
                            layer_scale_init_value=0.),
        num_embed=VOCAB))
    with torch.no_grad():
        peer.quantize.embedding.weight.copy_(
            F.normalize(torch.randn(VOCAB, 32), dim=1))
    return peer


def test_beitv2_pretraining_gives_the_same_logits_in_both_branches():
    early = 1  # the aggregation branch takes block 1's patches
    backbone = peer_vit(BEiTPretrainViT, use_rel_pos_bias=False,
                        use_shared_rel_pos_bias=True, final_norm=False,
                        out_indices=(early - 1, 1))
    neck = randomise(BEiTV2Neck(
        num_layers=2, early_layers=early,
        # (BEiTV2Neck reads the depth from 'depth', checks 'num_layers')
        backbone_arch=dict(TINY_ARCH, depth=TINY_ARCH['num_layers']))).eval()
    head = randomise(BEiTV2Head(embed_dims=DIMS, num_embed=VOCAB,
                                loss=dict(type='CrossEntropyLoss')))
    state = {**with_prefix(backbone.state_dict(), 'backbone.'),
             **with_prefix(neck.state_dict(), 'neck.'),
             **with_prefix(head.state_dict(), 'head.'),
             **with_prefix(peer_vqkd().state_dict(), 'target_generator.')}

    model = BEiTPretrainer(
        backbone=dict(type='BEiT', arch=TINY_ARCH, img_size=IMG,
                      patch_size=PATCH, use_mask_token=True,
                      use_shared_rel_pos_bias=True, final_norm=False,
                      out_indices=(early - 1, -1)),
        neck=dict(type='BEiTV2PatchAggregation', embed_dims=DIMS,
                  num_heads=TINY_ARCH['num_heads'],
                  feedforward_channels=TINY_ARCH['feedforward_channels'],
                  early_layers=early,
                  backbone_layers=TINY_ARCH['num_layers']),
        head=dict(type='BEiTMIMHead', in_channels=DIMS, num_embed=VOCAB),
        target_generator=dict(
            type='VQKDTokenizer', num_embed=VOCAB,
            encoder=dict(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH))
    ).eval()
    model.load_state_dict(
        convert_state_dict(state, 'mmpretrain', layout='model'), strict=True)

    x = torch.randn(2, 3, IMG, IMG)
    mask = torch.zeros(2, GRID, GRID, dtype=torch.bool)
    mask[0, 1, 1:3] = mask[1, 3, 0] = True
    flat = mask.flatten(1)
    with torch.no_grad():
        feats = neck(backbone(x, mask),
                     rel_pos_bias=backbone.shared_rel_pos_bias)
        expected = [head.cls_head(f[flat]) for f in feats]
        ours_feats = model.neck(model.backbone(x, flat), (GRID, GRID),
                                model.backbone.rel_pos_bias((GRID, GRID)))
        got = [model.head(f, flat) for f in ours_feats]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_vqkd_conversion_is_vqkd_from_mmpretrain():
    state = peer_vqkd().state_dict()
    converted = convert_state_dict(state, 'mmpretrain', model='vqkd')
    expected = vqkd_from_mmpretrain(state)
    assert converted.keys() == expected.keys()
    assert all(converted[k] is v for k, v in expected.items())
    validate_state_dict(converted, vqkd_target(converted))
