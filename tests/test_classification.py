"""ImageNet fine-tuning and linear probing: the recipes under configs/finetune
and configs/linear_probe, shrunk to a tiny model on a tiny generated data set,
trained through tools/train.py from a tiny pretraining-style checkpoint; the
loading of pretraining checkpoints (shared relative position bias expanded
per block) and the refusal of checkpoints of another width or depth.
"""
import copy
import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.necks import FeatureBatchNorm
from beit_plugin.registry import MODELS
from helpers import CLS_IMG as IMG
from helpers import CLS_NUM_CLASSES as NUM_CLASSES
from helpers import CLS_PATCH as PATCH
from helpers import (ROOT, TINY_ARCH, few_iterations, load_tool,
                     shrink_classifier)

FINETUNE = ROOT / 'configs/finetune'
LINEAR = ROOT / 'configs/linear_probe'
RECIPES = {
    'finetune': FINETUNE / 'beitv2_vit-base-p16_8xb128-coslr-100e_in1k.py',
    'linear': LINEAR / 'beit_vit-base-p16_8xb128-linear-coslr-100e_in1k.py',
}
DIMS = TINY_ARCH['embed_dims']


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=16, cls_val=8, seg_train=1, seg_val=1)
    return root / 'imagenet'


def pretrained_backbone(**kwargs) -> BEiT:
    """A tiny BEiT laid out as in pretraining (shared relative position bias,
    mask token, no final norm), with every parameter random."""
    torch.manual_seed(3)
    cfg = dict(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
               use_shared_rel_pos_bias=True, use_mask_token=True,
               final_norm=False, layer_scale_init_value=0.1)
    cfg.update(kwargs)
    model = BEiT(**cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05)
    return model


def save_backbone(model: BEiT, path: Path) -> Path:
    """A pretraining-style checkpoint: ``backbone.*`` plus another part."""
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state['head.cls_head.weight'] = torch.zeros(4, 4)
    torch.save({'state_dict': state}, path)
    return path


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return save_backbone(pretrained_backbone(),
                         tmp_path_factory.mktemp('ckpt') / 'pretrain.pth')


def expected_backbone(checkpoint: Path) -> Dict[str, torch.Tensor]:
    """The backbone values a classifier should hold after loading: the
    checkpoint's, with the shared table copied into every block."""
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    state = {k[len('backbone.'):]: v for k, v in state.items()
             if k.startswith('backbone.')}
    shared = state.pop('rel_pos_bias.relative_position_bias_table')
    state.pop('mask_token')
    for key in [k for k in state if k.endswith('relative_position_index')]:
        del state[key]
    for i in range(TINY_ARCH['num_layers']):
        state[f'blocks.{i}.attn.relative_position_bias_table'] = shared
    return state


def shrink_pipeline(pipeline):
    pipeline = copy.deepcopy(pipeline)
    for step in pipeline:
        if step.type == 'RandomResizedCrop':
            step.scale = IMG
        elif step.type == 'ResizeEdge':
            step.scale = IMG + 4
        elif step.type == 'CenterCrop':
            step.crop_size = IMG
    return pipeline


def tiny_recipe(kind: str, tmp: Path, data_root: Path,
                checkpoint: Path) -> Path:
    """The full recipe with a tiny model and data, 3 iterations."""
    cfg = Config.fromfile(RECIPES[kind])
    shrink_classifier(cfg)
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader)):
        # keep the recipe's dataloaders (and the mmpretrain scope they carry)
        loader.update(batch_size=4, num_workers=0, persistent_workers=False)
        loader.dataset.update(
            type='ImageNet', data_root=str(data_root), split=split,
            ann_file='', data_prefix='',
            classes=str(data_root / 'meta' / 'classes.txt'),
            pipeline=shrink_pipeline(loader.dataset.pipeline))
    cfg.test_dataloader = cfg.val_dataloader
    few_iterations(cfg, max_iters=3, checkpoint_interval=3, val_interval=3)
    path = tmp / f'tiny_{kind}.py'
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root, checkpoint) -> Dict[str, Path]:
    """Each recipe trained for 3 iterations by tools/train.py."""
    tmp = tmp_path_factory.mktemp('cls')
    train = load_tool('train')
    runs = {}
    for kind in RECIPES:
        config = tiny_recipe(kind, tmp, data_root, checkpoint)
        work_dir = tmp / f'work_{kind}'
        with DefaultScope.overwrite_default_scope('mmengine'):
            train.main([str(config), '--work-dir', str(work_dir)])
        runs[kind] = work_dir
    return runs


def final_state(work_dir: Path) -> Dict:
    return torch.load(work_dir / 'iter_3.pth', weights_only=False)


def test_linear_probe_trains_only_the_head(trained, checkpoint):
    saved = final_state(trained['linear'])
    state = saved['state_dict']
    expected = expected_backbone(checkpoint)
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    assert set(backbone) == set(expected)
    for key, value in expected.items():
        assert torch.equal(backbone[key], value), key
    # the BatchNorm has running statistics only, and they moved
    assert not any(k.startswith('neck.') and k.endswith(('weight', 'bias'))
                   for k in state)
    assert state['neck.bn.running_mean'].abs().sum() > 0
    assert state['neck.bn.num_batches_tracked'] == 3
    # the optimizer stepped the head's weight and bias, nothing else
    steps = [entry for entry in saved['optimizer']['state'].values()]
    assert len(steps) == 2
    assert sorted(tuple(s['exp_avg'].shape) for s in steps) == [
        (NUM_CLASSES, ), (NUM_CLASSES, DIMS)]


def test_finetune_changes_the_backbone(trained, checkpoint):
    state = final_state(trained['finetune'])['state_dict']
    expected = expected_backbone(checkpoint)
    changed = [k for k, v in expected.items()
               if not torch.equal(state[f'backbone.{k}'], v)]
    assert 'blocks.0.attn.qkv.weight' in changed
    assert 'blocks.1.mlp.fc2.weight' in changed
    assert 'patch_embed.proj.weight' in changed
    assert 'backbone.fc_norm.weight' in state


def test_finetune_validates_top1_and_top5(trained):
    log = next(trained['finetune'].glob('*/*.log')).read_text()
    assert re.search(r'accuracy/top1: [\d.]+\s+accuracy/top5: [\d.]+', log)


def test_test_tool_prints_accuracy(trained, capsys, tmp_path):
    work_dir = trained['linear']
    config = next(work_dir.glob('*/vis_data/config.py'))
    with DefaultScope.overwrite_default_scope('mmengine'):
        load_tool('test').main([str(config), str(work_dir / 'iter_3.pth'),
                                '--work-dir', str(tmp_path)])
    log = next(tmp_path.glob('*/*.log')).read_text()
    assert re.search(r'Iter\(test\).*accuracy/top1: [\d.]+\s+'
                     r'accuracy/top5: [\d.]+', log)


def build_classifier(kind: str, checkpoint: Path):
    cfg = Config.fromfile(RECIPES[kind])
    shrink_classifier(cfg)
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        return MODELS.build(cfg.model)


def test_pretraining_checkpoint_loads_with_the_bias_expanded(checkpoint):
    model = build_classifier('finetune', checkpoint)
    backbone = model.backbone
    assert backbone.rel_pos_bias is None and backbone.blocks[0].attn.window
    model.init_weights()
    expected = expected_backbone(checkpoint)
    own = backbone.state_dict()
    # every backbone tensor but the fine-tuning fc_norm comes from the file
    assert set(own) - set(expected) - {
        k for k in own if k.endswith('relative_position_index')} == {
            'fc_norm.weight', 'fc_norm.bias'}
    for key, value in expected.items():
        assert torch.equal(own[key], value), key
    shared = torch.load(checkpoint, weights_only=True)['state_dict'][
        'backbone.rel_pos_bias.relative_position_bias_table']
    assert shared.abs().sum() > 0
    for block in backbone.blocks:
        assert torch.equal(block.attn.relative_position_bias_table, shared)
    # and nothing reported missing by a plain non-strict load
    state = {k[len('backbone.'):]: v for k, v in torch.load(
        checkpoint, weights_only=True)['state_dict'].items()
        if k.startswith('backbone.')}
    missing, _ = backbone.load_state_dict(state, strict=False)
    assert set(missing) == {'fc_norm.weight', 'fc_norm.bias'}


@pytest.mark.parametrize('kind', ['finetune', 'linear'])
def test_wider_checkpoint_is_refused_naming_key_and_shapes(kind, tmp_path):
    wide = dict(TINY_ARCH, embed_dims=48)
    path = save_backbone(pretrained_backbone(arch=wide), tmp_path / 'w.pth')
    model = build_classifier(kind, path)
    with pytest.raises(ValueError,
                       match=r'^cls_token: checkpoint shape \(1, 1, 48\) vs '
                       r'model shape \(1, 1, 32\)$'):
        model.init_weights()


def test_deeper_checkpoint_is_refused_naming_the_extra_block(tmp_path):
    deep = dict(TINY_ARCH, num_layers=3)
    path = save_backbone(pretrained_backbone(arch=deep), tmp_path / 'd.pth')
    model = build_classifier('finetune', path)
    with pytest.raises(ValueError, match=r'^blocks\.2\.gamma_1: unexpected'):
        model.init_weights()


def test_shallower_checkpoint_is_refused_naming_the_missing_block(tmp_path):
    shallow = dict(TINY_ARCH, num_layers=1)
    path = save_backbone(pretrained_backbone(arch=shallow),
                         tmp_path / 's.pth')
    model = build_classifier('finetune', path)
    with pytest.raises(ValueError,
                       match=r'^blocks\.1\.gamma_1: missing from the '
                       r'checkpoint'):
        model.init_weights()


def test_mismatch_under_a_prefix_names_the_full_key():
    model = torch.nn.ModuleDict(dict(backbone=BEiT(
        arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)))
    other = BEiT(arch=dict(TINY_ARCH, feedforward_channels=96),
                 img_size=IMG, patch_size=PATCH)
    state = {f'backbone.{k}': v for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r'^backbone\.blocks\.0\.mlp\.fc1\.'
                       r'weight: checkpoint shape \(96, 32\) vs model shape '
                       r'\(64, 32\)$'):
        model.load_state_dict(state, strict=False)


def test_feature_batch_norm_pools_featmaps_and_has_no_parameters():
    neck = FeatureBatchNorm(in_channels=4)
    assert not list(neck.parameters())
    x = torch.randn(6, 4, 3, 3) * 5 + 2
    out, = neck((x, ))
    pooled = x.mean(dim=(2, 3))
    reference = (pooled - pooled.mean(0)) / torch.sqrt(
        pooled.var(0, unbiased=False) + 1e-6)
    torch.testing.assert_close(out, reference)
    with pytest.raises(ValueError, match='expects'):
        neck((torch.randn(2, 5), ))


# key hyperparameters of each recipe, as in the papers / official commands
RECIPE_VALUES = {
    'finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k.py':
    dict(arch='base', lr=4e-3, decay=0.65, drop_path=0.1, epochs=100,
         warmup=20),
    'finetune/beit_vit-large-p16_8xb128-coslr-50e_in1k.py':
    dict(arch='large', lr=1e-3, decay=0.75, drop_path=0.2, epochs=50,
         warmup=5),
    'finetune/beitv2_vit-base-p16_8xb128-coslr-100e_in1k.py':
    dict(arch='base', lr=5e-4, decay=0.65, drop_path=0.1, epochs=100,
         warmup=20),
    'finetune/beitv2_vit-large-p16_8xb128-coslr-50e_in1k.py':
    dict(arch='large', lr=5e-4, decay=0.8, drop_path=0.2, epochs=50,
         warmup=5),
    'finetune/beit_demo_finetune.py': dict(decay=0.75),
    'linear_probe/beit_vit-base-p16_8xb128-linear-coslr-100e_in1k.py':
    dict(arch='base', lr=4e-3, frozen=12, epochs=100),
    'linear_probe/beitv2_vit-base-p16_8xb128-linear-coslr-100e_in1k.py':
    dict(arch='base', lr=4e-3, frozen=12, epochs=100),
    'linear_probe/beitv2_vit-large-p16_8xb128-linear-coslr-100e_in1k.py':
    dict(arch='large', lr=4e-3, frozen=24, epochs=100),
    'linear_probe/beit_demo_linear.py': dict(frozen=6),
}


def test_every_recipe_is_listed():
    found = {p.relative_to(ROOT / 'configs').as_posix()
             for d in (FINETUNE, LINEAR) for p in d.glob('*.py')}
    assert found == set(RECIPE_VALUES)


@pytest.mark.parametrize('name', sorted(RECIPE_VALUES))
def test_recipe_builds(name):
    cfg = Config.fromfile(ROOT / 'configs' / name)
    values = RECIPE_VALUES[name]
    backbone = cfg.model.backbone
    # scoped: MMPretrain's get_model and tools build in the mmpretrain scope,
    # where a bare 'BEiT' is MMPretrain's MIM algorithm
    assert backbone.type == 'beit_plugin.BEiT'
    assert cfg.default_scope == 'beit_plugin'
    assert backbone.init_cfg.type == 'Pretrained'
    assert backbone.init_cfg.prefix == 'backbone.'
    assert cfg.val_evaluator.topk == (1, 5)
    if 'arch' in values:
        assert backbone.arch == values['arch']
        assert cfg.train_cfg.max_epochs == values['epochs']
        assert cfg.optim_wrapper.optimizer.lr == values['lr']
        assert cfg.train_dataloader.batch_size == 128
    else:  # the demos: the demo pretraining's backbone and data
        assert backbone.arch == dict(embed_dims=192, num_layers=6,
                                     num_heads=6, feedforward_channels=768)
        assert (backbone.img_size, backbone.patch_size) == (64, 8)
        # the embedded default's last checkpoint, whatever its length
        last = Config.fromfile(ROOT / 'configs/beit_pretrain.py').max_iters
        assert backbone.init_cfg.checkpoint == \
            f'work_dirs/beit_pretrain/iter_{last}.pth'
        assert cfg.train_dataloader.dataset.type == 'beit_plugin.DemoImageNet'
        assert cfg.val_dataloader.dataset.type == 'beit_plugin.DemoImageNet'
        assert cfg.train_dataloader.batch_size == 64
    if 'frozen' in values:  # linear probing
        assert backbone.frozen_stages == values['frozen']
        assert cfg.model.neck.type == 'beit_plugin.FeatureBatchNorm'
        assert backbone.out_type in ('featmap', 'cls_token')
    else:
        assert backbone.out_type == 'avg_featmap'
        assert backbone.use_rel_pos_bias and \
            not backbone.use_shared_rel_pos_bias
        assert backbone.final_norm is False
        assert cfg.optim_wrapper.constructor.endswith(
            'LayerDecayOptimWrapperConstructor')
        # no_decay_names: the official classification recipe (checked in
        # test_layer_decay.py)
        assert cfg.optim_wrapper.paramwise_cfg == dict(
            layer_decay_rate=values['decay'],
            no_decay_names=('pos_embed', 'cls_token'))
        if 'drop_path' in values:
            assert backbone.drop_path_rate == values['drop_path']
            warmup, cosine = cfg.param_scheduler
            assert (warmup.end, cosine.begin, cosine.end) == (
                values['warmup'], values['warmup'], values['epochs'])
    # build the model (tiny for speed) and its optimizer
    shrink_classifier(cfg)
    backbone.init_cfg = None
    from mmengine.optim import build_optim_wrapper
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    trained = {id(p) for g in wrapper.optimizer.param_groups
               for p in g['params'] if p.requires_grad}
    backbone_params = {id(p) for p in model.backbone.parameters()}
    if 'frozen' in values:
        assert not any(p.requires_grad for p in model.backbone.parameters())
    else:
        assert backbone_params <= trained
    out = model(torch.randn(2, 3, IMG, IMG), mode='tensor')
    assert out.shape == (2, NUM_CLASSES)
