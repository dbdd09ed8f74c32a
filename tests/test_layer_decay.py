"""Layer-wise learning-rate decay for BEiT fine-tuning (official rules)."""
from typing import Dict, Tuple

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import beit_plugin  # noqa: F401  (registers our scope)
from beit_plugin.engine.optimizers import layer_decay_constructor
from helpers import CONFIGS, TINY_ARCH, config_id

LR, WD, RATE, N = 1e-3, 0.05, 0.65, TINY_ARCH['num_layers']
NAME = 'LayerDecayOptimWrapperConstructor'
BACKBONE = dict(type='beit_plugin.BEiT', arch=TINY_ARCH, img_size=32,
                patch_size=8)


def classifier(**backbone) -> nn.Module:
    from mmpretrain.registry import MODELS
    backbone_cfg = dict(BACKBONE, out_type='avg_featmap',
                        use_rel_pos_bias=True, use_shared_rel_pos_bias=False)
    backbone_cfg.update(backbone)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(
            type='ImageClassifier', backbone=backbone_cfg,
            head=dict(type='LinearClsHead', num_classes=4, in_channels=32)))


def segmentor(**backbone) -> nn.Module:
    import mmseg.models  # noqa: F401  (importable thanks to beit_plugin)
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),
            backbone=dict(BACKBONE, out_indices=(0, 1), out_type='featmap',
                          use_rel_pos_bias=True,
                          use_shared_rel_pos_bias=False, **backbone),
            decode_head=dict(type='FCNHead', in_channels=32, in_index=1,
                             channels=16, num_convs=1, num_classes=3,
                             norm_cfg=dict(type='BN', requires_grad=True))))


def build(model: nn.Module, scope: str = 'beit_plugin', name: str = NAME,
          **paramwise) -> OptimWrapper:
    cfg = dict(type='OptimWrapper',
               optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
               constructor=name,
               paramwise_cfg=dict(dict(layer_decay_rate=RATE), **paramwise))
    with DefaultScope.overwrite_default_scope(scope):
        return build_optim_wrapper(model, cfg)


def groups_by_name(model: nn.Module, wrapper: OptimWrapper) -> Dict[str, Dict]:
    """The group of every trainable parameter, checking it is in exactly
    one group and that no frozen parameter is in any."""
    groups = wrapper.optimizer.param_groups
    result = {}
    for name, param in model.named_parameters():
        owners = [g for g in groups if any(p is param for p in g['params'])]
        assert len(owners) == (1 if param.requires_grad else 0), name
        if owners:
            result[name] = owners[0]
    assert sum(len(g['params']) for g in groups) == len(result)
    return result


def assert_group(group: Dict, layer_id: int, decay: bool,
                 num_layers: int = N) -> None:
    scale = RATE**(num_layers + 1 - layer_id)
    assert group['layer_id'] == layer_id
    assert group['lr_scale'] == pytest.approx(scale)
    assert group['lr'] == pytest.approx(LR * scale)
    assert group['weight_decay'] == (WD if decay else 0.)


CLASSIFIER_TABLE = [
    ('backbone.cls_token', 0, False),
    ('backbone.patch_embed.proj.weight', 0, True),
    ('backbone.patch_embed.proj.bias', 0, False),
    ('backbone.blocks.0.attn.qkv.weight', 1, True),
    ('backbone.blocks.0.attn.q_bias', 1, False),
    ('backbone.blocks.0.norm1.weight', 1, False),
    ('backbone.blocks.1.gamma_2', 2, False),
    # decayed, as in the official classification recipe by default
    ('backbone.blocks.1.attn.relative_position_bias_table', 2, True),
    ('backbone.blocks.1.mlp.fc2.weight', 2, True),
    ('backbone.norm.weight', 3, False),
    ('backbone.fc_norm.weight', 3, False),
    ('head.fc.weight', 3, True),
    ('head.fc.bias', 3, False),
]


@pytest.mark.parametrize('scope,name', [
    ('beit_plugin', NAME), ('mmpretrain', f'beit_plugin.{NAME}')])
def test_classifier_lr_and_decay_per_parameter(scope, name):
    model = classifier()
    groups = groups_by_name(model, build(model, scope, name))
    for param_name, layer_id, decay in CLASSIFIER_TABLE:
        assert_group(groups[param_name], layer_id, decay)
    # grouped by (layer, decay): 4 layers x {decay, no decay}
    assert len({id(g) for g in groups.values()}) == 2 * (N + 2)


def test_shared_relative_position_bias_is_the_last_layer():
    """The official ``get_num_layer_for_vit`` gives ``rel_pos_bias.*``
    ``num_max_layer - 1 = N + 1``: the full learning rate."""
    model = classifier(use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    groups = groups_by_name(model, build(model))
    group = groups['backbone.rel_pos_bias.relative_position_bias_table']
    assert_group(group, N + 1, decay=True)
    assert group['lr'] == LR  # RATE ** 0


def test_segmentor_backbone_blocks_and_decode_head():
    model = segmentor()
    groups = groups_by_name(model, build(model))
    assert_group(groups['backbone.cls_token'], 0, decay=False)
    for name, group in groups.items():
        if name.startswith('backbone.blocks.1.'):
            assert group['layer_id'] == 2, name
        if name.startswith('decode_head.'):
            assert group['layer_id'] == N + 1, name
            assert group['lr_scale'] == 1 and group['lr'] == LR, name
    assert_group(groups['decode_head.conv_seg.weight'], N + 1, decay=True)
    assert_group(groups['decode_head.convs.0.bn.weight'], N + 1, decay=False)


def test_frozen_parameters_are_skipped_silently(monkeypatch):
    logs = []
    monkeypatch.setattr(layer_decay_constructor, 'print_log',
                        lambda msg, **kwargs: logs.append(msg))
    model = classifier(frozen_stages=1)  # embeddings and blocks.0
    groups = groups_by_name(model, build(model))
    assert not any(name.startswith(('backbone.blocks.0.', 'backbone.patch_'))
                   or name == 'backbone.cls_token' for name in groups)
    assert {g['layer_id'] for g in groups.values()} == {2, 3}
    assert logs == ['Layer-wise lr decay: 2 layers, rate 0.65, '
                    '4 parameter groups']


def test_explicit_num_layers_overrides_inference():
    model = classifier()
    groups = groups_by_name(model, build(model, num_layers=4))
    assert_group(groups['backbone.cls_token'], 0, False, num_layers=4)
    assert_group(groups['backbone.blocks.0.attn.qkv.weight'], 1, True,
                 num_layers=4)
    assert_group(groups['head.fc.weight'], 5, True, num_layers=4)


def test_bare_backbone_is_its_own_prefix():
    from beit_plugin.models.backbones import BEiT
    model = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8)
    groups = groups_by_name(model, build(model))
    assert_group(groups['cls_token'], 0, decay=False)
    assert_group(groups['blocks.1.attn.qkv.weight'], 2, decay=True)
    assert_group(groups['norm.weight'], N + 1, decay=False)


def test_num_layers_below_the_block_count_is_refused():
    with pytest.raises(ValueError, match=r'blocks\.1\..* num_layers=1'):
        build(classifier(), num_layers=1)


def test_without_beit_num_layers_is_required():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match='no beit_plugin BEiT.*num_layers'):
        build(model)


def test_without_beit_the_model_names_are_backbone_names():
    model = nn.Module()  # e.g. a BEiT from another library, same names
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
    model.blocks = nn.ModuleList([nn.Linear(4, 4)])
    model.head = nn.Linear(4, 2)
    groups = groups_by_name(model, build(model, num_layers=1))
    assert_group(groups['cls_token'], 0, False, num_layers=1)
    assert_group(groups['blocks.0.weight'], 1, True, num_layers=1)
    assert_group(groups['head.weight'], 2, True, num_layers=1)


def test_custom_keys_multiply_on_top():
    model = classifier()
    groups = groups_by_name(model, build(
        model, custom_keys={'head': dict(lr_mult=10., decay_mult=0.5)}))
    assert groups['head.fc.weight']['lr'] == pytest.approx(LR * 10)
    assert groups['head.fc.weight']['weight_decay'] == pytest.approx(WD / 2)
    assert groups['head.fc.bias']['weight_decay'] == 0.
    assert_group(groups['backbone.fc_norm.weight'], N + 1, decay=False)


@pytest.mark.parametrize('paramwise,match', [
    (dict(norm_decay_mult=0.), 'norm_decay_mult'),
    (dict(custom_keys={'head': dict(momentum=0.5)}), 'momentum'),
])
def test_unsupported_options_are_refused(paramwise, match):
    with pytest.raises(ValueError, match=match):
        build(classifier(), **paramwise)


def test_one_adamw_step_uses_the_group_lrs():
    model = classifier()
    wrapper = build(model)
    params = dict(model.named_parameters())
    watched = ['backbone.cls_token', 'backbone.blocks.0.attn.q_bias',
               'head.fc.bias']
    before = {name: params[name].detach().clone() for name in watched}
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    wrapper.step()
    # First AdamW step with unit gradients and no decay: p -= lr.
    for name, layer_id in zip(watched, (0, 1, N + 1)):
        moved = before[name] - params[name].detach()
        expected = LR * RATE**(N + 1 - layer_id)
        assert torch.allclose(moved, torch.full_like(moved, expected),
                              rtol=1e-5), name


@pytest.mark.parametrize('names,match', [
    ('cls_token', 'sequence of parameter names'),
    (('backbone.cls_token', ), "start with 'backbone.'"),
])
def test_bad_no_decay_names_are_refused(names, match):
    with pytest.raises(ValueError, match=match):
        build(classifier(), no_decay_names=names)


# The official rules, written from unilm's source (not from ours), as
# {official parameter name: (weight decay, lr scale)}.

def official_layer_id(var_name: str, num_max_layer: int) -> int:
    """beit/optim_factory.py (beit2: the same), get_num_layer_for_vit."""
    if var_name in ('cls_token', 'mask_token', 'pos_embed'):
        return 0
    elif var_name.startswith('patch_embed'):
        return 0
    elif var_name.startswith('rel_pos_bias'):
        return num_max_layer - 1
    elif var_name.startswith('blocks'):
        return int(var_name.split('.')[1]) + 1
    return num_max_layer - 1


def official_name(name: str) -> str:
    """Our classifier's parameter name -> the official ``VisionTransformer``
    one (``backbone.blocks.0...`` -> ``blocks.0...``, ``head.fc.weight`` ->
    ``head.weight``)."""
    return name.replace('backbone.', '', 1).replace('head.fc.', 'head.')


def official_classification(named_params, weight_decay: float,
                            layer_decay: float, num_layers: int,
                            disable_weight_decay_on_rel_pos_bias: bool
                            ) -> Dict[str, Tuple[float, float]]:
    """beit2/run_class_finetuning.py main(): LayerDecayValueAssigner and
    the skip list (model.no_weight_decay() of modeling_finetune.py, plus the
    per-block tables with the flag), then optim_factory.py
    get_parameter_groups."""
    values = [layer_decay**(num_layers + 1 - i)
              for i in range(num_layers + 2)]
    skip_list = {'pos_embed', 'cls_token'}
    if disable_weight_decay_on_rel_pos_bias:
        for i in range(num_layers):
            skip_list.add('blocks.%d.attn.relative_position_bias_table' % i)
    result = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith('.bias') or name in skip_list:
            this_weight_decay = 0.
        else:
            this_weight_decay = weight_decay
        layer_id = official_layer_id(name, len(values))
        result[name] = (this_weight_decay, values[layer_id])
    return result


def official_segmentation(named_params, weight_decay: float,
                          layer_decay_rate: float, num_layers: int
                          ) -> Dict[str, Tuple[float, float]]:
    """beit/semantic_segmentation/mmcv_custom/
    layer_decay_optimizer_constructor.py (beit2: the same):
    LayerDecayOptimizerConstructor.add_params on the whole segmentor."""
    def get_num_layer_for_vit(var_name, num_max_layer):
        if var_name in ('backbone.cls_token', 'backbone.mask_token',
                        'backbone.pos_embed'):
            return 0
        elif var_name.startswith('backbone.patch_embed'):
            return 0
        elif var_name.startswith('backbone.blocks'):
            return int(var_name.split('.')[2]) + 1
        return num_max_layer - 1

    num_layers = num_layers + 2
    result = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith('.bias') or \
                name in ('pos_embed', 'cls_token'):
            this_weight_decay = 0.
        else:
            this_weight_decay = weight_decay
        layer_id = get_num_layer_for_vit(name, num_layers)
        scale = layer_decay_rate**(num_layers - layer_id - 1)
        result[name] = (this_weight_decay, scale)
    return result


def ours(model: nn.Module, optim_wrapper: Dict
         ) -> Dict[str, Tuple[float, float]]:
    """{our parameter name: (weight decay, lr / base lr)} of the optimizer
    the recipe's optim_wrapper builds for ``model`` (a plain OptimWrapper:
    AMP needs a GPU, and does not change the groups)."""
    cfg = dict(type='OptimWrapper', optimizer=optim_wrapper['optimizer'],
               constructor=optim_wrapper['constructor'],
               paramwise_cfg=optim_wrapper['paramwise_cfg'])
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        wrapper = build_optim_wrapper(model, cfg)
    base_lr = optim_wrapper['optimizer']['lr']
    return {name: (group['weight_decay'], group['lr'] / base_lr)
            for name, group in groups_by_name(model, wrapper).items()}


def assert_same_groups(ours: Dict, official: Dict) -> None:
    assert ours.keys() == official.keys()
    for name, (weight_decay, lr_scale) in official.items():
        assert ours[name][0] == weight_decay, name
        assert ours[name][1] == pytest.approx(lr_scale), name


CLASSIFICATION_CONFIGS = [
    *sorted(CONFIGS.glob('finetune/*.py')),
    CONFIGS / 'own_data/beit_demo_finetune_imagefolder.py']
SEGMENTATION_CONFIGS = [
    *sorted(CONFIGS.glob('seg/*.py')),
    CONFIGS / 'own_data/beit_demo_upernet_ade-layout.py']


@pytest.mark.parametrize('path', CLASSIFICATION_CONFIGS, ids=config_id)
def test_classification_recipes_are_the_official_fine_tuning(path):
    """Decay of 1-d parameters, biases, pos_embed and cls_token off; the
    per-block relative position tables decayed (no
    --disable_weight_decay_on_rel_pos_bias)."""
    optim_wrapper = Config.fromfile(path).optim_wrapper
    model = classifier(use_abs_pos_emb=True)
    official = official_classification(
        [(official_name(name), param)
         for name, param in model.named_parameters()],
        optim_wrapper.optimizer.weight_decay,
        optim_wrapper.paramwise_cfg.layer_decay_rate, N, False)
    groups = {official_name(name): group
              for name, group in ours(model, optim_wrapper).items()}
    assert_same_groups(groups, official)
    assert groups['blocks.0.attn.relative_position_bias_table'][0] > 0


def test_the_rel_pos_bias_flag_is_a_no_decay_pattern():
    """--disable_weight_decay_on_rel_pos_bias as the class docstring
    spells it."""
    optim_wrapper = dict(
        optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
        constructor=NAME,
        paramwise_cfg=dict(layer_decay_rate=RATE, no_decay_names=(
            'pos_embed', 'cls_token',
            'blocks.*.attn.relative_position_bias_table')))
    model = classifier(use_abs_pos_emb=True)
    official = official_classification(
        [(official_name(name), param)
         for name, param in model.named_parameters()], WD, RATE, N,
        True)
    groups = {official_name(name): group
              for name, group in ours(model, optim_wrapper).items()}
    assert_same_groups(groups, official)
    assert groups['blocks.0.attn.relative_position_bias_table'][0] == 0.


@pytest.mark.parametrize('path', SEGMENTATION_CONFIGS, ids=config_id)
def test_segmentation_recipes_are_the_official_constructor(path):
    """Only 1-d parameters and biases without decay: cls_token, pos_embed
    and the relative position tables decayed."""
    optim_wrapper = Config.fromfile(path).optim_wrapper
    model = segmentor(use_abs_pos_emb=True)
    official = official_segmentation(
        model.named_parameters(), optim_wrapper.optimizer.weight_decay,
        optim_wrapper.paramwise_cfg.layer_decay_rate, N)
    groups = ours(model, optim_wrapper)
    assert_same_groups(groups, official)
    assert groups['backbone.cls_token'][0] > 0
