"""BEiT v1 and v2 pretraining through the real MMEngine Runner.

The paper recipes under configs/beit and configs/beitv2 are shrunk to a tiny
model on a tiny generated data set and trained with tools/train.py (their
AmpOptimWrapper becomes bfloat16 on the CPU); the embedded default runs under
tools/dist_train.sh with two gloo ranks.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.registry import MODELS
from helpers import PRETRAIN_GRID as GRID
from helpers import PRETRAIN_IMG as IMG
from helpers import PRETRAIN_PATCH as PATCH
from helpers import PRETRAIN_VOCAB as VOCAB
from helpers import (ROOT, TESTS, TINY_ARCH, few_iterations, free_port,
                     load_tool, save_tokenizer)

RECIPES = {
    'v1': ROOT / 'configs/beit/'
    'beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py',
    'v2': ROOT / 'configs/beitv2/'
    'beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py',
}


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=24, cls_val=8, seg_train=2, seg_val=2)
    return root / 'imagenet'


def tiny_recipe(version: str, tmp: Path, data_root: Path) -> Path:
    """The paper recipe with a tiny model, tiny data, 4 iterations."""
    cfg = Config.fromfile(RECIPES[version])
    tokenizer = save_tokenizer(version, tmp / f'tokenizer_{version}.pth')
    model = cfg.model
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)
    model.head.update(in_channels=TINY_ARCH['embed_dims'], num_embed=VOCAB)
    tok = model.target_generator
    tok.init_cfg.checkpoint = str(tokenizer)
    if version == 'v1':
        tok.update(n_hid=8, n_blk_per_group=1, vocab_size=VOCAB)
    else:
        model.backbone.out_indices = (0, -1)
        model.neck.update(embed_dims=32, num_heads=2, feedforward_channels=64,
                          early_layers=1, backbone_layers=2)
        tok.update(encoder=dict(arch=TINY_ARCH, img_size=IMG,
                                patch_size=PATCH),
                   num_embed=VOCAB, embed_dims=8)
    pipeline = copy.deepcopy(cfg.train_pipeline)
    for step in pipeline:
        if step.type == 'RandomResizedCropAndInterpolationWithTwoPic':
            step.size = IMG
            step.second_size = IMG // 2 if version == 'v1' else IMG
        if step.type.endswith('BlockwiseMaskGenerator'):
            step.update(input_size=GRID, num_masking_patches=6,
                        min_num_patches=2)
    # keep the recipe's dataloader (and the mmpretrain scope it inherits)
    cfg.train_dataloader.update(batch_size=4, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset.update(
        type='ImageNet', data_root=str(data_root), split='train',
        ann_file='', data_prefix='', pipeline=pipeline,
        classes=str(data_root / 'meta' / 'classes.txt'))
    few_iterations(cfg, max_iters=4, checkpoint_interval=2)
    path = tmp / f'tiny_{version}.py'
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root) -> Dict[str, Path]:
    """Each version trained for 4 iterations by tools/train.py."""
    tmp = tmp_path_factory.mktemp('pretrain')
    train = load_tool('train')
    runs = {}
    for version in ('v1', 'v2'):
        config = tiny_recipe(version, tmp, data_root)
        work_dir = tmp / f'work_{version}'
        with DefaultScope.overwrite_default_scope('mmengine'):
            train.main([str(config), '--work-dir', str(work_dir)])
        runs[version] = work_dir
    return runs


def scalars(work_dir: Path):
    files = list(work_dir.glob('*/vis_data/scalars.json'))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_recipe_trains_through_the_runner(trained, version):
    work_dir = trained[version]
    logs = [r for r in scalars(work_dir) if 'loss' in r]
    assert [r['iter'] for r in logs] == [1, 2, 3, 4]
    keys = {'loss_mim', 'acc_mim'} | ({'loss_mim_1'} if version == 'v2'
                                      else set())
    for record in logs:
        assert keys <= set(record)
        assert all(torch.isfinite(torch.tensor(record[k])) for k in keys)
    assert (work_dir / 'iter_2.pth').is_file()
    assert (work_dir / 'iter_4.pth').is_file()
    config = Config.fromfile(next(work_dir.glob('*/vis_data/config.py')))
    # the GPU recipe's float16 AMP ran as bfloat16 on this CPU
    assert config.optim_wrapper.type == 'beit_plugin.BF16AmpOptimWrapper'


class CaptureAtStart(Hook):
    """Records the runner's state when training (re)starts."""

    def before_train(self, runner) -> None:
        self.iter = runner.iter
        self.model = copy.deepcopy(runner.model.state_dict())
        self.optim = copy.deepcopy(runner.optim_wrapper.state_dict())


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_resume_restores_model_optimizer_tokenizer_and_iteration(
        trained, version, tmp_path):
    work_dir = trained[version]
    saved = torch.load(work_dir / 'iter_2.pth', weights_only=False)
    cfg = load_tool('train').build_config(load_tool('train').parse_args([
        str(next(work_dir.glob('*/vis_data/config.py'))), '--work-dir',
        str(tmp_path), '--resume', str(work_dir / 'iter_2.pth'),
        '--cfg-options', 'train_cfg.max_iters=3'
    ]))
    runner = Runner.from_cfg(cfg)
    capture = CaptureAtStart()
    runner.register_hook(capture, priority='LOWEST')
    runner.train()
    assert capture.iter == 2
    assert runner.iter == 3
    assert capture.model.keys() == saved['state_dict'].keys()
    for key, value in saved['state_dict'].items():
        assert torch.equal(capture.model[key], value), key
    tokenizer_keys = [k for k in saved['state_dict']
                      if k.startswith('target_generator.')]
    assert tokenizer_keys
    if version == 'v2':
        assert 'target_generator.quantize.embedding.weight' in tokenizer_keys
    state = capture.optim['state']
    assert state and state.keys() == saved['optimizer']['state'].keys()
    for index, entry in saved['optimizer']['state'].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(state[index][name]),
                               torch.as_tensor(value)), (index, name)


def test_frozen_tokenizer_is_saved_unchanged(trained, tmp_path):
    """The tokenizer file, the iteration-4 checkpoint's tokenizer: equal."""
    tokenizer = torch.load(
        trained['v2'].parent / 'tokenizer_v2.pth', weights_only=True)
    final = torch.load(trained['v2'] / 'iter_4.pth', weights_only=False)
    for key, value in tokenizer['state_dict'].items():
        assert torch.equal(final['state_dict'][f'target_generator.{key}'],
                           value), key


def test_pretrained_checkpoint_loads_into_cls_and_seg_backbones(trained):
    checkpoint = trained['v2'] / 'iter_4.pth'
    saved = torch.load(checkpoint, weights_only=False)['state_dict']
    pretrained = {k[len('backbone.'):]: v for k, v in saved.items()
                  if k.startswith('backbone.')}
    init_cfg = dict(type='Pretrained', checkpoint=str(checkpoint),
                    prefix='backbone.')
    common = dict(type='beit_plugin.BEiT', arch=TINY_ARCH, patch_size=PATCH,
                  use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                  init_cfg=init_cfg)
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = PRETRAIN_MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(common, img_size=IMG, out_type='avg_featmap'),
            head=dict(type='LinearClsHead', num_classes=8, in_channels=32)))
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor_backbone = SEG_MODELS.build(dict(
            common, img_size=96, out_indices=(0, 1), out_type='featmap'))
    shared = pretrained['rel_pos_bias.relative_position_bias_table']
    for backbone, size in ((classifier.backbone, IMG),
                           (segmentor_backbone, 96)):
        before = copy.deepcopy(backbone.state_dict())
        backbone.init_weights()
        state = backbone.state_dict()
        for key, value in pretrained.items():
            if key in state and 'relative_position' not in key \
                    and key != 'pos_embed':
                assert torch.equal(state[key], value), key
                assert not torch.equal(before[key], value) or \
                    value.abs().sum() == 0, key
        assert torch.equal(state['blocks.0.gamma_1'],
                           pretrained['blocks.0.gamma_1'])
        table = state['blocks.1.attn.relative_position_bias_table']
        if size == IMG:  # the shared table, copied into every block
            assert torch.equal(table, shared)
        else:  # resized for the larger segmentation input
            side = 2 * (96 // PATCH) - 1
            assert table.shape == (side * side + 3, shared.shape[1])
        out = backbone(torch.randn(1, 3, size, size))
        assert all(torch.isfinite(o).all() for o in out)


DIST_CONFIG = """
_base_ = '{root}/configs/beit_pretrain.py'
custom_imports = dict(imports=['beit_plugin', 'compat_toys'],
                      allow_failed_imports=False)
model = dict(target_generator=dict(
    init_cfg=dict(checkpoint='{root}/checkpoints/vqkd_demo_hog.pth')))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type='ImageNet', data_root='{data}', split='train',
                 classes='{data}/meta/classes.txt'))
train_cfg = dict(max_iters=2)
custom_hooks = [dict(type='compat_toys.ParamDumpHook')]
"""


@pytest.mark.slow
def test_dist_train_demo_two_ranks_stay_identical(data_root, tmp_path):
    """``bash tools/dist_train.sh configs/beit_pretrain.py 2`` on a CPU:
    gloo and CPU DDP chosen automatically, the same weights (tokenizer
    codebook included) on both ranks at the end."""
    config = tmp_path / 'demo_dist.py'
    config.write_text(DIST_CONFIG.format(root=ROOT, data=data_root))
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()),
               PYTHON=sys.executable)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(TESTS), os.environ.get('PYTHONPATH')) if p)
    result = subprocess.run(
        ['bash', str(ROOT / 'tools/dist_train.sh'), str(config), '2',
         '--work-dir', str(tmp_path / 'work')],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / 'work' / f'params_rank{r}.pth',
                        weights_only=True) for r in (0, 1)]
    assert [r['world_size'] for r in ranks] == [2, 2]
    assert 'target_generator.quantize.embedding.weight' in \
        ranks[0]['state_dict']
    torch.testing.assert_close(ranks[0]['state_dict'], ranks[1]['state_dict'],
                               rtol=0, atol=0)
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()


def test_second_view_norm_must_match_the_tokenizer():
    """A v2 preprocessor ([-1, 1]) with the DALL-E tokenizer is refused."""
    cfg = Config.fromfile(RECIPES['v1'])
    model = copy.deepcopy(cfg.model)
    model.target_generator = dict(type='DALLEEncoder', n_hid=8,
                                  n_blk_per_group=1, vocab_size=VOCAB)
    model.backbone.arch = TINY_ARCH
    model.head.update(in_channels=32, num_embed=VOCAB)
    model.data_preprocessor = dict(
        type='TwoNormDataPreprocessor', mean=[0.] * 3, std=[1.] * 3,
        second_mean=[127.5] * 3, second_std=[127.5] * 3, to_rgb=True)
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        with pytest.raises(ValueError, match='second_mean.*DALLEEncoder'):
            MODELS.build(model)
        model.data_preprocessor = dict(cfg.data_preprocessor)
        built = MODELS.build(model)
    # the recipe's own second normalisation is the tokenizer's
    assert built.data_preprocessor.second_mean.flatten().tolist() == \
        pytest.approx(built.target_generator.input_norm['mean'])
