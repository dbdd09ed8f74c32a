"""transformers' BEiT equals ours once its weights are converted: backbone
features, masked-image-modeling logits and classification logits, from a
live model's state dict (transformers 5 names) and from the serialised
names of its files."""
import pytest
import torch
from mmpretrain.models import ImageClassifier
from safetensors.torch import load_file
from transformers import (BeitConfig, BeitForImageClassification,
                          BeitForMaskedImageModeling, BeitModel)

from beit_plugin.convert import convert_state_dict, under
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.heads import BEiTMIMHead
from helpers import TINY_ARCH, randomise

IMG, PATCH, GRID = 32, 8, 4
DIMS = TINY_ARCH['embed_dims']


def peer_config(**kwargs) -> BeitConfig:
    """A tiny transformers config equal to :data:`TINY_ARCH` (LayerNorm eps
    1e-6 as ours: transformers' default is 1e-12)."""
    return BeitConfig(
        hidden_size=DIMS, num_hidden_layers=TINY_ARCH['num_layers'],
        num_attention_heads=TINY_ARCH['num_heads'],
        intermediate_size=TINY_ARCH['feedforward_channels'],
        image_size=IMG, patch_size=PATCH, layer_norm_eps=1e-6, **kwargs)


def ours(**kwargs) -> BEiT:
    return BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH, **kwargs)


def peer_state(peer: torch.nn.Module, serialised: bool, tmp_path) -> dict:
    """The peer's weights: its state dict, or what save_pretrained wrote."""
    if not serialised:
        return peer.state_dict()
    peer.save_pretrained(tmp_path)
    return load_file(tmp_path / 'model.safetensors')


VARIANTS = {
    'shared-bias': (
        dict(use_shared_relative_position_bias=True, use_mask_token=True),
        dict(use_shared_rel_pos_bias=True, use_mask_token=True)),
    'per-layer-bias-abs-pos': (
        dict(use_relative_position_bias=True,
             use_absolute_position_embeddings=True),
        dict(use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
             use_abs_pos_emb=True)),
    'both-biases-no-layer-scale': (
        dict(use_relative_position_bias=True,
             use_shared_relative_position_bias=True,
             layer_scale_init_value=0.),
        dict(use_rel_pos_bias=True, use_shared_rel_pos_bias=True,
             layer_scale_init_value=0.)),
}


@pytest.mark.parametrize('serialised', [False, True],
                         ids=['live-names', 'file-names'])
@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_backbone_equals_beit_model_last_hidden_state(variant, serialised,
                                                      tmp_path):
    peer_kwargs, our_kwargs = VARIANTS[variant]
    peer = randomise(BeitModel(peer_config(use_mean_pooling=False,
                                           **peer_kwargs))).eval()
    model = ours(**our_kwargs).eval()
    model.load_state_dict(
        convert_state_dict(peer_state(peer, serialised, tmp_path), 'hf'),
        strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = peer(x).last_hidden_state
        got = model(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_mim_head_equals_masked_image_modeling_logits():
    peer = randomise(BeitForMaskedImageModeling(peer_config(
        use_mask_token=True, use_shared_relative_position_bias=True,
        vocab_size=50))).eval()
    converted = convert_state_dict(peer.state_dict(), 'hf', layout='model')
    model = torch.nn.ModuleDict(dict(
        backbone=ours(use_mask_token=True, use_shared_rel_pos_bias=True),
        head=BEiTMIMHead(DIMS, num_embed=50))).eval()
    model.load_state_dict(converted, strict=True)  # our pretrainer's names
    x = torch.randn(2, 3, IMG, IMG)
    mask = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    mask[0, [1, 5, 6]] = mask[1, [0, 15]] = True
    with torch.no_grad():
        expected = peer(x, bool_masked_pos=mask).logits[mask]
        feats = model['backbone'](x, mask)[-1][:, 1:]
        got = model['head'](feats, mask)
    assert got.shape == (5, 50)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_classifier_equals_image_classification_logits():
    peer = randomise(BeitForImageClassification(peer_config(
        use_relative_position_bias=True, num_labels=5))).eval()
    converted = convert_state_dict(peer.state_dict(), 'hf', layout='model')
    assert 'backbone.fc_norm.weight' in converted  # pooler.layernorm
    model = ImageClassifier(
        backbone=ours(out_type='avg_featmap', final_norm=False,
                      use_rel_pos_bias=True, use_shared_rel_pos_bias=False),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=DIMS))
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = peer(x).logits
        got = model.eval()(x, mode='tensor')
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_backbone_only_layout_drops_the_heads():
    peer = BeitForImageClassification(peer_config(num_labels=5))
    converted = convert_state_dict(peer.state_dict(), 'hf')
    assert not any(k.startswith(('head', 'backbone')) for k in converted)
    assert torch.equal(converted['blocks.1.attn.q_bias'],
                       under(peer.state_dict(), 'beit.')[
                           'layers.1.attention.q_proj.bias'])


def test_two_final_norms_are_refused():
    peer = BeitForMaskedImageModeling(peer_config(
        use_mask_token=True, use_mean_pooling=False))
    with pytest.raises(ValueError, match=r'^checkpoint has two final norms '
                       r'\(beit\.layernorm\.weight and layernorm\.weight\)'):
        convert_state_dict(peer.state_dict(), 'hf')


def test_transformers_file_given_as_timm_names_its_layout():
    state = BeitModel(peer_config()).state_dict()
    with pytest.raises(ValueError) as err:
        convert_state_dict(state, 'timm')
    assert str(err.value) == (
        "checkpoint looks like a BEiT model in transformers' layout "
        '(embeddings.cls_token), not like a timm checkpoint: '
        "convert it with source='hf'")
