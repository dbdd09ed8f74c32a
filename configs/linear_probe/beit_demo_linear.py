# Demo: linear probing of the demo-pretrained BEiT on the embedded demo data
# (8 shape classes, 1600 training / 320 validation images of 64 x 64 px,
# generated on first use under data/demo), on the CPU in a few minutes:
#
#   python tools/train.py configs/linear_probe/beit_demo_linear.py
#   python tools/test.py configs/linear_probe/beit_demo_linear.py work_dirs/beit_demo_linear/iter_250.pth
#
# It probes work_dirs/beit_pretrain/iter_800.pth, which
# `python tools/train.py configs/beit_pretrain.py` writes. The same probe of
# a randomly initialised backbone, the baseline it should beat:
#
#   python tools/train.py configs/linear_probe/beit_demo_linear.py --cfg-options model.backbone.init_cfg=None --work-dir work_dirs/beit_demo_linear_random
#
# The BEiT v2 linear-probing recipe, shrunk: the demo pretraining's
# backbone, frozen entirely; the average patch token of block 4 (of 6;
# ViT-B probes block 9 of 12 this way), standardised by a BatchNorm without
# affine parameters, into a linear head; AdamW, cosine to 0,
# iteration-based (max_iters = 10 epochs of the demo set) with validation
# once an epoch. Demo changes: a higher lr than the recipe's 4e-3 (a few
# hundred steps only), and horizontal flips without random crops, the images
# kept at their own size (each holds one shape anywhere in the frame, which
# a crop can cut).
#
# The average patch token rather than the last CLS token (the v2 base
# config's default): the demo pretraining trains its CLS token little, and a
# random backbone's CLS token is a strong random-features baseline of its
# own. docs/results.md has the numbers of both tokens, on the validation
# split and on a larger held-out set.
_base_ = './beitv2_vit-base-p16_8xb128-linear-coslr-100e_in1k.py'

pretrained = 'work_dirs/beit_pretrain/iter_800.pth'
demo_arch = dict(embed_dims=192, num_layers=6, num_heads=6,
                 feedforward_channels=768)
num_classes = 8
img_size = 64
max_iters = 250
val_interval = 25

data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, **demo_arch),  # replaces the string
        img_size=img_size,
        patch_size=8,
        frozen_stages=demo_arch['num_layers'],
        out_indices=(3, ),
        out_type='featmap',
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=demo_arch['embed_dims']),
    head=dict(num_classes=num_classes, in_channels=demo_arch['embed_dims']))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    # MMPretrain's own, which its inferencers replace for in-memory images
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
# scoped names: these dataloaders come from an MMPretrain base config
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(type='beit_plugin.DemoImageNet',
                 data_root='data/demo/imagenet', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(type='beit_plugin.DemoImageNet',
                 data_root='data/demo/imagenet', pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-2))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=0., by_epoch=False, begin=0,
         end=max_iters),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', by_epoch=False,
                    interval=100, max_keep_ckpts=1, save_last=True,
                    save_best='auto'))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False)
# refuses, before training, a data set whose class count is not num_classes;
# stops at a NaN / infinite loss or gradient norm
custom_hooks = [dict(type='beit_plugin.ClassCountCheckHook'),
                dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
