# Demo: fine-tune the demo-pretrained BEiT on the embedded demo data (8 shape
# classes, 1600 training / 320 validation images of 64 x 64 px, generated on
# first use under data/demo), on the CPU in a few minutes:
#
#   python tools/train.py configs/finetune/beit_demo_finetune.py
#   python tools/test.py configs/finetune/beit_demo_finetune.py work_dirs/beit_demo_finetune/iter_600.pth
#
# It starts from work_dirs/beit_pretrain/iter_800.pth, which
# `python tools/train.py configs/beit_pretrain.py` writes. The same recipe
# from scratch, for comparison:
#
#   python tools/train.py configs/finetune/beit_demo_finetune.py --cfg-options model.backbone.init_cfg=None --work-dir work_dirs/beit_demo_finetune_scratch
#
# The BEiT v2 ViT-B recipe, shrunk: the demo pretraining's backbone, AdamW,
# drop path, label smoothing, linear warmup then cosine, iteration-based
# (max_iters = 24 epochs of the demo set). Changes for the small model and
# data: a higher lr and a milder layer-wise decay (a 6-block model; with
# ViT-B's 5e-4 / 0.65 over 175 iterations neither the pretrained nor the
# scratch model moved off chance: train loss 2.08 -> 2.05); no mixup /
# cutmix, RandAugment or random erasing (on 1600 images and a few hundred
# iterations they slow learning far more than they regularise) and a milder
# crop (so that the one shape in the image mostly stays in).
_base_ = './beitv2_vit-base-p16_8xb128-coslr-100e_in1k.py'

pretrained = 'work_dirs/beit_pretrain/iter_800.pth'
demo_arch = dict(embed_dims=192, num_layers=6, num_heads=6,
            feedforward_channels=768)
num_classes = 8
img_size = 64
max_iters = 600
warmup_iters = 50
val_interval = 100

data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, **demo_arch),  # replaces the string
        img_size=img_size,
        patch_size=8,
        init_cfg=dict(checkpoint=pretrained)),
    head=dict(num_classes=num_classes, in_channels=demo_arch['embed_dims']),
    train_cfg=dict(_delete_=True))
optim_wrapper = dict(optimizer=dict(lr=1e-3),
                     paramwise_cfg=dict(layer_decay_rate=0.75))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.35, 1.),
         backend='pillow', interpolation='bicubic'),
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

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=1, save_last=True,
                    save_best='auto'))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False)
# refuses, before training, a data set whose class count is not num_classes;
# stops at a NaN / infinite loss or gradient norm
custom_hooks = [dict(type='beit_plugin.ClassCountCheckHook'),
                dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
