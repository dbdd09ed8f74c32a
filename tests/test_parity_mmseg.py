"""MMSegmentation's BEiT equals ours once its weights are converted: the
multi-level feature maps of the backbone, and the logits of a whole UperNet
segmentor whose neck and decode head keep their keys.

(mmseg is imported inside the tests: it imports only once beit_plugin's
compat has stood in for mmcv-lite's missing compiled ops.)"""
import pytest
import torch
from mmengine.registry import DefaultScope

from beit_plugin.convert import convert_state_dict
from beit_plugin.models.backbones import BEiT
from helpers import TINY_ARCH, randomise

IMG, PATCH = 32, 8
DIMS = TINY_ARCH['embed_dims']
DEPTH = 4
OUT_INDICES = (0, 1, 2, 3)
PEER_BACKBONE = dict(
    img_size=IMG, patch_size=PATCH, embed_dims=DIMS, num_layers=DEPTH,
    num_heads=TINY_ARCH['num_heads'],
    mlp_ratio=TINY_ARCH['feedforward_channels'] // DIMS,
    out_indices=OUT_INDICES, norm_cfg=dict(type='LN', eps=1e-6))
OUR_BACKBONE = dict(
    arch=dict(TINY_ARCH, num_layers=DEPTH), img_size=IMG, patch_size=PATCH,
    out_indices=OUT_INDICES, out_type='featmap', use_rel_pos_bias=True,
    use_shared_rel_pos_bias=False)


@pytest.fixture(autouse=True)
def _mmseg_scope():
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


@pytest.mark.parametrize('final_norm', [False, True])
def test_backbone_feature_maps_equal_mmseg_beit(final_norm):
    from mmseg.models.backbones import BEiT as PeerBEiT
    peer = randomise(PeerBEiT(final_norm=final_norm, **PEER_BACKBONE))
    peer.eval()  # (its train() returns None)
    model = BEiT(final_norm=final_norm, **OUR_BACKBONE).eval()
    model.load_state_dict(convert_state_dict(peer.state_dict(), 'mmseg'),
                          strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected, got = peer(x), model(x)
    assert [g.shape for g in got] == [(2, DIMS, 4, 4)] * len(OUT_INDICES)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def segmentor(backbone: dict) -> torch.nn.Module:
    from mmseg.registry import MODELS
    norm = dict(type='BN', requires_grad=True)
    return MODELS.build(dict(
        type='EncoderDecoder',
        backbone=backbone,
        neck=dict(type='Feature2Pyramid', embed_dim=DIMS,
                  rescales=[4, 2, 1, 0.5], norm_cfg=norm),
        decode_head=dict(type='UPerHead', in_channels=[DIMS] * 4,
                         in_index=list(OUT_INDICES), channels=16,
                         num_classes=3, norm_cfg=norm))).eval()


def test_segmentor_logits_equal_with_neck_and_heads_kept():
    peer = randomise(segmentor(dict(type='BEiT', final_norm=False,
                                    **PEER_BACKBONE)))
    with torch.no_grad():  # BN statistics too
        for name, buffer in peer.named_buffers():
            if name.endswith(('running_mean', 'running_var')):
                buffer.uniform_(0.5, 2.)
    model = segmentor(dict(type='beit_plugin.BEiT', final_norm=False,
                           **OUR_BACKBONE))
    state = peer.state_dict()
    converted = convert_state_dict(state, 'mmseg', layout='model')
    model.load_state_dict(converted, strict=True)
    for key in ('neck.upsample_4x.1.running_var',
                'decode_head.conv_seg.weight'):
        assert converted[key] is state[key]
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = peer(x, mode='tensor')
        got = model(x, mode='tensor')
    assert got.shape == (2, 3, 16, 16)  # the 4x pyramid level of the 4x4 grid
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
