"""ADE20K semantic segmentation with UperNet: configs/seg/, DemoADE20K,
checkpoint transfer from pretraining, sliding-window inference, the tools and
SyncBN as BN for distributed training on the CPU (beit_plugin.distributed).

Everything runs on tiny models and tiny generated data sets.
"""
import copy
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.structures import PixelData
from torch import nn

from beit_plugin.datasets import DemoADE20K
from beit_plugin.datasets.demo_data import SEG_CLASSES, make_demo_data
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.backbones.relative_position import \
    num_relative_distances
from helpers import (ROOT, TINY_ARCH, free_port, load_tool, shrink_segmentor,
                     write_tiny_seg_demo_config)

SEG_CONFIGS = sorted((ROOT / 'configs' / 'seg').glob('*.py'))
FULL_CONFIGS = [c for c in SEG_CONFIGS if 'demo' not in c.name]
DEMO_CONFIG = ROOT / 'configs' / 'seg' / 'beit_demo_upernet.py'
TINY_DIMS = TINY_ARCH['embed_dims']


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=8, cls_val=8, seg_train=4, seg_val=2)
    return root / 'ade'


def build_segmentor(model_cfg: dict) -> nn.Module:
    from mmseg.registry import MODELS
    return MODELS.build(model_cfg)


# ---------------------------------------------------------------------------
# DemoADE20K
# ---------------------------------------------------------------------------


def test_demo_ade20k_loads_the_layout_with_nine_classes(ade_root: Path):
    from mmseg.registry import DATASETS
    dataset = DATASETS.build(
        dict(
            type='beit_plugin.DemoADE20K',  # resolved from the mmseg scope
            data_root=str(ade_root),
            pipeline=[dict(type='LoadAnnotations')]))
    assert isinstance(dataset, DemoADE20K)
    assert len(dataset) == 4
    assert tuple(dataset.metainfo['classes']) == SEG_CLASSES
    assert len(SEG_CLASSES) == 9 and len(dataset.metainfo['palette']) == 9
    assert dataset.reduce_zero_label
    labels = set()
    for i in range(len(dataset)):
        item = dataset[i]
        raw = np.array(Image.open(item['seg_map_path']))
        seg = item['gt_seg_map']
        assert seg.shape == raw.shape == (96, 96)
        # 0 (not labelled) -> 255, k -> k - 1
        np.testing.assert_array_equal(seg[raw == 0], 255)
        np.testing.assert_array_equal(seg[raw > 0], raw[raw > 0] - 1)
        labels |= set(np.unique(seg).tolist())
    assert 255 in labels and 0 in labels  # ignore band, background
    assert labels - {255} <= set(range(9)) and len(labels) > 2

    val = DemoADE20K(
        data_root=str(ade_root),
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'))
    assert len(val) == 2
    assert '/images/validation/' in val.get_data_info(0)['img_path']


# ---------------------------------------------------------------------------
# The configs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('config', SEG_CONFIGS, ids=lambda p: p.stem)
def test_seg_config_builds_segmentor(config: Path):
    cfg = Config.fromfile(config)
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.backbone.type == 'beit_plugin.BEiT'
    assert cfg.model.backbone.out_type == 'featmap'
    assert cfg.model.backbone.use_rel_pos_bias
    assert not cfg.model.backbone.use_shared_rel_pos_bias
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    assert cfg.model.test_cfg.mode == 'slide'
    assert cfg.optim_wrapper.constructor == \
        'beit_plugin.LayerDecayOptimWrapperConstructor'
    demo = 'demo' in config.name
    expected_norm = 'BN' if demo else 'SyncBN'
    for part in ('neck', 'decode_head', 'auxiliary_head'):
        assert cfg.model[part].norm_cfg.type == expected_norm, part
    if demo:
        assert cfg.train_dataloader.batch_size >= 2  # BN in UperNet's PPM
        assert cfg.train_dataloader.dataset.type == 'beit_plugin.DemoADE20K'
    else:
        crop = cfg.crop_size
        assert cfg.model.backbone.img_size == crop
        assert cfg.model.test_cfg.crop_size == crop
        assert cfg.model.data_preprocessor.size == crop
        assert cfg.train_cfg.max_iters // cfg.optim_wrapper.get(
            'accumulative_counts', 1) == 160000
        assert cfg.param_scheduler[-1]['end'] == cfg.train_cfg.max_iters

    model = build_segmentor(shrink_segmentor(cfg.model))
    from mmseg.models import EncoderDecoder, Feature2Pyramid
    assert type(model) is EncoderDecoder
    assert isinstance(model.backbone, BEiT)
    assert isinstance(model.neck, Feature2Pyramid)
    assert model.backbone.out_indices == tuple(cfg.model.backbone.out_indices)
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    syncs = [isinstance(m, nn.SyncBatchNorm) for m in norms]
    assert norms and all(syncs) if not demo else not any(syncs)

    # layer-wise lr decay over the backbone, heads at the top rate
    from mmengine.optim import build_optim_wrapper
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.type = 'OptimWrapper'
    optim_cfg.pop('accumulative_counts', None)
    optim = build_optim_wrapper(model, optim_cfg)
    lr = cfg.optim_wrapper.optimizer.lr
    rate = cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    depth = model.backbone.num_layers
    lr_of = {id(p): g['lr'] for g in optim.param_groups for p in g['params']}
    assert lr_of[id(model.decode_head.conv_seg.weight)] == pytest.approx(lr)
    assert lr_of[id(model.backbone.patch_embed.proj.weight)] == \
        pytest.approx(lr * rate ** (depth + 1))

    # a training step (tiny input, a multiple of the patch size)
    model = revert_sync_batchnorm(model)
    patch = model.backbone.patch_size
    size = 4 * patch
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 5, (1, size, size))))
        sample.set_metainfo(dict(img_shape=(size, size),
                                 pad_shape=(size, size)))
        samples.append(sample)
    losses = model.loss(torch.randn(2, 3, size, size), samples)
    assert set(losses) >= {'decode.loss_ce', 'aux.loss_ce'}
    sum(v for k, v in losses.items() if 'loss' in k).backward()


# ---------------------------------------------------------------------------
# Sliding-window inference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(75, 100), (50, 100)])
def test_slide_inference_keeps_the_input_size(shape):
    """Neither side a multiple of the 64 px crop (nor of the patch, 8); one
    side shorter than the crop, so its windows are not multiples of the
    patch either (the test-time `size_divisor` padding handles that)."""
    cfg = Config.fromfile(DEMO_CONFIG)
    model = build_segmentor(shrink_segmentor(cfg.model))
    model.eval()
    assert model.test_cfg.mode == 'slide'
    assert tuple(model.test_cfg.crop_size) == (64, 64)
    from mmseg.structures import SegDataSample
    h, w = shape
    sample = SegDataSample()
    sample.set_metainfo(dict(img_shape=shape, ori_shape=shape))
    data = dict(
        inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8)],
        data_samples=[sample])
    with torch.no_grad():
        (result, ) = model.test_step(data)
    assert result.seg_logits.data.shape == (9, h, w)
    assert result.pred_sem_seg.shape == shape


# ---------------------------------------------------------------------------
# From a pretraining checkpoint to the segmentation backbone
# ---------------------------------------------------------------------------


def offset_row(dy: int, dx: int, grid: int) -> int:
    return (dy + grid - 1) * (2 * grid - 1) + (dx + grid - 1)


def test_pretraining_checkpoint_loads_into_larger_seg_backbone(tmp_path):
    torch.manual_seed(3)
    pretrain = BEiT(
        arch=TINY_ARCH, img_size=224, patch_size=16,
        use_shared_rel_pos_bias=True, use_rel_pos_bias=False,
        use_mask_token=True)
    with torch.no_grad():
        for p in pretrain.parameters():
            p.normal_()
    shared = pretrain.rel_pos_bias.relative_position_bias_table.detach()
    assert shared.shape[0] == num_relative_distances((14, 14))
    path = tmp_path / 'pretrain.pth'
    torch.save(
        dict(state_dict={
            f'backbone.{k}': v
            for k, v in pretrain.state_dict().items()
        }), path)

    seg_kwargs = dict(
        arch=TINY_ARCH, img_size=512, patch_size=16, out_indices=(0, 1),
        out_type='featmap', final_norm=False, use_rel_pos_bias=True,
        use_shared_rel_pos_bias=False)
    seg = BEiT(**seg_kwargs, init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    seg.init_weights()

    tables = [b.attn.relative_position_bias_table.detach()
              for b in seg.blocks]
    grid = 32
    assert tables[0].shape == (num_relative_distances((grid, grid)),
                               TINY_ARCH['num_heads'])
    for table in tables[1:]:
        torch.testing.assert_close(table, tables[0])
    for dy, dx in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1),
                   (-1, -1)]:
        torch.testing.assert_close(
            tables[0][offset_row(dy, dx, grid)],
            shared[offset_row(dy, dx, 14)], msg=f'offset {(dy, dx)}')
    torch.testing.assert_close(tables[0][-3:], shared[-3:])  # CLS entries
    torch.testing.assert_close(seg.blocks[1].mlp.fc2.weight,
                               pretrain.blocks[1].mlp.fc2.weight)

    # every parameter of the segmentation backbone comes from the checkpoint
    fresh = BEiT(**seg_kwargs)
    state = {k: v.clone() for k, v in pretrain.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert missing == []
    assert set(unexpected) <= {'mask_token', 'norm.weight', 'norm.bias'}
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, seg.state_dict()[name], msg=name)

    out = seg(torch.randn(1, 3, 512, 512))
    assert [o.shape for o in out] == [(1, TINY_DIMS, grid, grid)] * 2


# ---------------------------------------------------------------------------
# tools/train.py and tools/test.py on the demo config
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_one_iteration_then_test_with_show_dir(
        tmp_path: Path, ade_root: Path, capfd,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    config = write_tiny_seg_demo_config(tmp_path, ade_root)
    work_dir = tmp_path / 'work'
    load_tool('train').main([str(config), '--work-dir', str(work_dir)])
    checkpoint = work_dir / 'iter_1.pth'
    assert checkpoint.is_file()
    assert 'mIoU' in capfd.readouterr().out  # the val at the end

    show_dir = tmp_path / 'vis'
    metrics = load_tool('test').main([
        str(config), str(checkpoint), '--work-dir',
        str(tmp_path / 'test'), '--show-dir',
        str(show_dir)
    ])
    assert 0.0 <= metrics['mIoU'] <= 100.0
    out = capfd.readouterr().out
    assert 'per class results' in out and 'mIoU:' in out
    for name in SEG_CLASSES:
        assert f' {name} ' in out
    pngs = sorted(show_dir.rglob('*.png'))
    assert len(pngs) == 2, pngs  # one overlay per validation image


# ---------------------------------------------------------------------------
# SyncBN under distributed training on the CPU
# ---------------------------------------------------------------------------


@pytest.fixture
def gloo_group():
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
        world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sync_bn_model() -> nn.Module:
    from mmcv.cnn import build_norm_layer
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        build_norm_layer(dict(type='SyncBN'), 4)[1])
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].running_mean.fill_(0.5)
    return model


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CPU-only fix')
def test_sync_bn_becomes_bn_for_cpu_ddp(gloo_group,
                                        monkeypatch: pytest.MonkeyPatch):
    """MMEngine's Runner refuses a SyncBN model under CPU DDP; the tools'
    configure_cpu_distributed makes the config's SyncBN BN, which wraps."""
    from mmcv.cnn import build_norm_layer

    from beit_plugin.distributed import configure_cpu_distributed
    monkeypatch.setenv('LOCAL_RANK', '0')
    runner = types.SimpleNamespace(
        distributed=True, cfg=Config(dict()),
        logger=MMLogger.get_instance('test_sync_bn_cpu_ddp'))
    # what configure_cpu_distributed makes of the wrapper config
    wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
    with pytest.raises(ValueError, match='SyncBatchNorm layers only work'):
        Runner.wrap_model(runner, dict(wrapper_cfg), sync_bn_model())

    cfg = Config(dict(launcher='pytorch', sync_bn='torch', model=dict(
        norm_cfg=dict(type='SyncBN', requires_grad=True))))
    configure_cpu_distributed(cfg)
    assert 'sync_bn' not in cfg
    model = nn.Sequential(nn.Conv2d(3, 4, 1),
                          build_norm_layer(cfg.model.norm_cfg, 4)[1])
    model.load_state_dict(sync_bn_model().state_dict())  # same keys
    wrapped = Runner.wrap_model(runner, dict(cfg.model_wrapper_cfg), model)
    assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
    norm = wrapped.module[1]
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
    assert not any(
        isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules())
    assert torch.all(norm.weight == 2.0)
    assert torch.all(norm.running_mean == 0.5)
    out = wrapped(torch.randn(2, 3, 4, 4))
    out.sum().backward()
