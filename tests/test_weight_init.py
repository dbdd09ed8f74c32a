"""The official initialisations (weight_init.py), checked on freshly built
ViT-B sized modules against statistics computed by hand from unilm's code:

- modeling_pretrain.py: ``trunc_normal_(std=.02, a=-std, b=std)`` for Linear
  and Conv2d weights, tokens and ``lm_head``, zero biases;
- modeling_finetune.py (and VQ-KD, modeling_vqkd.py): timm's
  ``trunc_normal_(std=.02)`` (bounds +-2) for Linear weights and tokens, the
  patch-embedding conv at PyTorch's default;
- both: ``fix_init_weight`` divides block ``l``'s (1-based) ``attn.proj`` /
  ``mlp.fc2`` weights by ``sqrt(2 l)``; v2's ``cls_pt_layers`` keep PyTorch's
  default Linear init, then ``fix_init_cls_pt_weight`` rescales them.
"""
import math

import pytest
import torch
from mmengine.config import Config
from torch import nn

from beit_plugin.models.backbones import BEiT
from beit_plugin.models.heads import BEiTMIMHead, PixelRegressionHead
from beit_plugin.models.necks import BEiTV2PatchAggregation
from beit_plugin.models.tokenizers import VQKDTokenizer
from helpers import PRETRAINING_CONFIGS, config_id

STD = 0.02  # the official init_std
# N(0, STD^2) cut at +-STD: STD * sqrt(1 - 2 phi(1) / (Phi(1) - Phi(-1)))
TRUNCATED_STD = STD * math.sqrt(
    1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi) / math.erf(2**-0.5))
WIDTH, DEPTH, MLP = 768, 12, 3072
PATCH_FAN_IN = 3 * 16 * 16  # the patch-embedding conv
EARLY_LAYERS = 9  # BEiT v2 ViT-B


def assert_truncated(weight: torch.Tensor, scale: float = 1.) -> None:
    """Pretraining: std about 0.0108 and nothing beyond +-0.02 (both divided
    by ``scale``)."""
    weight = weight.detach() * scale
    assert weight.std().item() == pytest.approx(TRUNCATED_STD, rel=0.02)
    assert weight.abs().max().item() <= STD * (1 + 1e-6)


def assert_untruncated(weight: torch.Tensor, scale: float = 1.) -> None:
    """Fine-tuning: std 0.02, with the tails of a normal (far beyond 0.02)."""
    weight = weight.detach() * scale
    assert weight.std().item() == pytest.approx(STD, rel=0.02)
    assert weight.abs().max().item() > 3 * STD


def assert_pytorch_default(linear: nn.Module, scale: float = 1.) -> None:
    """PyTorch's Linear / Conv2d default (kaiming-uniform with a=sqrt(5)):
    weight and bias uniform in +-1/sqrt(fan_in), the weight divided by
    ``scale``."""
    fan_in = linear.weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    weight = linear.weight.detach() * scale
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3),
                                                rel=0.03)
    assert weight.abs().max().item() <= bound * (1 + 1e-6)
    bias = linear.bias.detach()
    assert bound * 0.9 < bias.abs().max().item() <= bound * (1 + 1e-6)


def depth_scale(depth: int) -> float:
    """What undoes ``fix_init_weight`` at (1-based) depth ``depth``."""
    return math.sqrt(2. * depth)


@pytest.fixture(scope='module')
def pretrain_vit() -> BEiT:
    torch.manual_seed(0)
    return BEiT(arch='base', use_mask_token=True, use_abs_pos_emb=True,
                init_mode='modeling_pretrain')


@pytest.fixture(scope='module')
def finetune_vit() -> BEiT:
    torch.manual_seed(0)
    return BEiT(arch='base', use_abs_pos_emb=True, use_rel_pos_bias=True,
                use_shared_rel_pos_bias=False, out_type='avg_featmap')


def assert_common(model: BEiT) -> None:
    """What both modes share: zero biases, tables and q/v biases, unit
    LayerNorms, the layer scale as given."""
    for name, param in model.named_parameters():
        if name.endswith(('.bias', 'q_bias', 'v_bias',
                          'relative_position_bias_table')) \
                and not name.startswith('patch_embed.'):
            assert not param.any(), name
        if '.gamma_' in name:
            assert torch.all(param == 0.1), name
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1)


def test_pretraining_init_is_modeling_pretrain(pretrain_vit):
    model = pretrain_vit
    for depth, block in enumerate(model.blocks, start=1):
        assert_truncated(block.attn.qkv.weight)
        assert_truncated(block.mlp.fc1.weight)
        assert_truncated(block.attn.proj.weight, depth_scale(depth))
        assert_truncated(block.mlp.fc2.weight, depth_scale(depth))
    # the patch embedding too, with a zero bias
    assert_truncated(model.patch_embed.proj.weight)
    assert not model.patch_embed.proj.bias.any()
    for token in (model.cls_token, model.mask_token, model.pos_embed):
        assert token.abs().max() <= STD
        assert token.std().item() == pytest.approx(TRUNCATED_STD, rel=0.1)
    assert_common(model)


def test_finetuning_init_is_modeling_finetune_and_the_default(finetune_vit):
    model = finetune_vit
    assert model.init_mode == 'modeling_finetune'
    for depth, block in enumerate(model.blocks, start=1):
        assert_untruncated(block.attn.qkv.weight)
        assert_untruncated(block.mlp.fc1.weight)
        assert_untruncated(block.attn.proj.weight, depth_scale(depth))
        assert_untruncated(block.mlp.fc2.weight, depth_scale(depth))
    # modeling_finetune.py's _init_weights skips Conv2d: PyTorch's default
    assert model.patch_embed.proj.weight[0].numel() == PATCH_FAN_IN
    assert_pytorch_default(model.patch_embed.proj)
    for token in (model.cls_token, model.pos_embed):
        assert token.std().item() == pytest.approx(STD, rel=0.1)
    assert_common(model)


def test_mim_heads_are_the_official_lm_head():
    torch.manual_seed(0)
    for head in (BEiTMIMHead(WIDTH, 8192).cls_head,
                 PixelRegressionHead(WIDTH, PATCH_FAN_IN).reg_head):
        assert_truncated(head.weight)
        assert not head.bias.any()


def test_patch_aggregation_is_the_official_cls_pt_layers():
    """PyTorch's default Linear init (built after the official model's
    ``apply(_init_weights)``), then proj / fc2 weights (not biases) divided
    by ``sqrt(2 (early_layers + i + 1))``."""
    torch.manual_seed(0)
    neck = BEiTV2PatchAggregation(WIDTH, 12, MLP, num_layers=2,
                                  early_layers=EARLY_LAYERS,
                                  backbone_layers=DEPTH)
    for i, block in enumerate(neck.cls_pt_layers):
        depth = EARLY_LAYERS + i + 1
        bound = 1 / math.sqrt(WIDTH)
        qkv = block.attn.qkv.weight
        assert qkv.abs().max() <= bound
        assert qkv.std().item() == pytest.approx(bound / math.sqrt(3),
                                                 rel=0.02)
        assert_pytorch_default(block.mlp.fc1)
        assert_pytorch_default(block.attn.proj, depth_scale(depth))
        assert_pytorch_default(block.mlp.fc2, depth_scale(depth))
        assert not block.attn.q_bias.any() and not block.attn.v_bias.any()
    assert torch.all(neck.norm.weight == 1) and not neck.norm.bias.any()


def test_vqkd_encoder_decoder_and_task_layers_are_modeling_finetune():
    """beit2/modeling_vqkd.py builds modeling_finetune.VisionTransformer
    encoder and decoder and inits its task layers with timm's
    ``trunc_normal_(std=.02)``."""
    torch.manual_seed(0)
    arch = dict(embed_dims=WIDTH, num_layers=1, num_heads=12,
                feedforward_channels=MLP)
    tokenizer = VQKDTokenizer(
        encoder=dict(arch=arch, img_size=32, patch_size=16),
        decoder=dict(arch=arch), target_dims=WIDTH, num_embed=16)
    for vit in (tokenizer.encoder, tokenizer.decoder):
        assert vit.init_mode == 'modeling_finetune'
        assert_untruncated(vit.blocks[0].attn.qkv.weight)
        assert_pytorch_default(vit.patch_embed.proj)
    for layer in (tokenizer.encode_task_layer[0],
                  tokenizer.encode_task_layer[2],
                  tokenizer.decode_task_layer[0],
                  tokenizer.decode_task_layer[2]):
        assert_untruncated(layer.weight)
        assert not layer.bias.any()


def test_unknown_init_mode_is_refused():
    with pytest.raises(ValueError, match="init_mode 'pretrain' is not one "
                       r"of \('modeling_pretrain', 'modeling_finetune'\)"):
        BEiT(arch=dict(embed_dims=32, num_layers=1, num_heads=2,
                       feedforward_channels=64), init_mode='pretrain')


@pytest.mark.parametrize('path', PRETRAINING_CONFIGS, ids=config_id)
def test_every_pretraining_config_sets_the_pretraining_init(path):
    backbone = Config.fromfile(path).model.backbone
    assert backbone.init_mode == 'modeling_pretrain'
