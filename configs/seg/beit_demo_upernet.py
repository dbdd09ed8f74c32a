# UperNet on the demo ADE set (data/demo/ade, 96x96 px, 9 classes) from the
# demo BEiT pretraining (configs/beit_pretrain.py): a CPU-sized version of
# configs/seg/beit-base_upernet_8xb2-160k_ade20k-512x512.py.
#
#   python tools/train.py configs/seg/beit_demo_upernet.py
#   python tools/test.py configs/seg/beit_demo_upernet.py \
#       work_dirs/beit_demo_upernet/iter_2000.pth --show-dir vis
#   # from scratch, for comparison:
#   python tools/train.py configs/seg/beit_demo_upernet.py \
#       --work-dir work_dirs/beit_demo_upernet_scratch \
#       --cfg-options model.backbone.init_cfg=None
#
# The data set is generated on first use. The backbone is the demo
# pretraining's (trained at 64 px), with one relative position bias table
# per block initialised from the pretraining's shared table. Training crops
# are the pretraining's image size (its patch grid); the test slides a
# crop-sized window with half-crop stride over the 96 px images (4 windows).
#
# Plain BN everywhere (no GPU needed). The batch is >= 2 on purpose: with 1
# image UperNet's pool-scale-1 branch (PPM) normalises a 1x1 map of one
# sample, and BN raises "Expected more than 1 value per channel".
_base_ = [
    'mmseg::_base_/models/upernet_beit.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)

# 33 epochs of the 480 training images at batch 8; about 0.25 s an
# iteration on 2 idle CPU cores, so about 9 minutes with validation. With 480
# iterations (and lr 3.5e-4, layer decay 0.65) both the pretrained and the
# scratch model still predicted background everywhere (mIoU 10.07 then).
max_iters = 2000
warmup_iters = 100
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
embed_dims = 192
num_classes = 9  # beit_plugin.datasets.demo_data.SEG_CLASSES

data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=8))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='beit_plugin.BEiT',
        # identical to configs/beit_pretrain.py's backbone
        arch=dict(
            embed_dims=embed_dims,
            num_layers=6,
            num_heads=6,
            feedforward_channels=768),
        img_size=crop_size,
        patch_size=8,
        # blocks 2, 3, 4 and 6 of 6 (base: 4, 6, 8 and 12 of 12)
        out_indices=(1, 2, 3, 5),
        drop_path_rate=0.1,
        final_norm=False,
        out_type='featmap',
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
        use_shared_rel_pos_bias=False,
        layer_scale_init_value=0.1,
        # written by `python tools/train.py configs/beit_pretrain.py`;
        # --cfg-options model.backbone.init_cfg=None trains from scratch
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/beit_pretrain/iter_800.pth',
            prefix='backbone.')),
    neck=dict(
        type='Feature2Pyramid',
        embed_dim=embed_dims,
        rescales=[4, 2, 1, 0.5],
        norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[embed_dims] * 4,
        channels=64,
        num_classes=num_classes,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=embed_dims,
        channels=32,
        num_classes=num_classes,
        norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(32, 32)))

# ADE20K's pipelines scaled from 512 px to the 96 px demo images, with a
# narrower rescale range (0.75-1.5 instead of 0.5-2): at 0.5 the smallest
# shapes shrink to 7 px, less than a patch, and at 2 a 64 px crop holds a
# fraction of one shape
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='beit_plugin.CheckedLoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(384, 96),
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    # MMSegmentation's own loaders, which its inference_model replaces
    # (LoadAnnotations by that name)
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(384, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,  # loading 96 px images is cheap; leave the cores to math
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='beit_plugin.DemoADE20K',
        _scope_='mmseg',  # see val_evaluator
        data_root='data/demo/ade',
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,  # loading 96 px images is cheap; leave the cores to math
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='beit_plugin.DemoADE20K',
        _scope_='mmseg',
        data_root='data/demo/ade',
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# MMSegmentation's components are named without a scope, so they are built
# in the mmseg scope wherever this config is inherited from: MMEngine gives
# a `beit_plugin::seg/...` base's dicts the beit_plugin scope, which does not
# reach MMSegmentation's registries
val_evaluator = dict(type='IoUMetric', _scope_='mmseg', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# the base-size recipe's optimizer (AdamW, layer-wise decay; no AMP) at the
# lr and decay that suit the pretrained backbone, chosen by a sweep on the
# demo whose numbers docs/results.md gives: the demo fine-tuning's lr
# 1e-3 / decay 0.75 leaves the pretrained backbone below the one from
# scratch, whose own best setting (1e-3 / 0.9) this one is too high for
optim_wrapper = dict(
    type='OptimWrapper',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(
        type='AdamW', lr=4e-3, betas=(0.9, 0.999), weight_decay=0.05,
        fused=True),
    constructor='beit_plugin.LayerDecayOptimWrapperConstructor',
    # the official segmentation recipe's weight decay (unilm beit/ and beit2/
    # semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py,
    # LayerDecayOptimizerConstructor.add_params): its exemption
    # `name in ('pos_embed', 'cls_token')` sees the segmentor's full names
    # ('backbone.cls_token') and never matches, so only 1-d parameters and
    # biases go without decay; cls_token and the relative position tables are
    # decayed
    paramwise_cfg=dict(layer_decay_rate=0.9, no_decay_names=()))
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=warmup_iters),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters),
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    checkpoint=dict(
        type='beit_plugin.AtomicCheckpointHook', by_epoch=False,
        interval=max_iters),
    visualization=dict(type='SegVisualizationHook', _scope_='mmseg'))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
# refuses, before training, a data set whose class count is not num_classes;
# stops at a NaN / infinite loss or gradient norm
custom_hooks = [dict(type='beit_plugin.ClassCountCheckHook'),
                dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
