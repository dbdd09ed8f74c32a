# BEiT v1 large (self-supervised on ImageNet-22k, then intermediate
# fine-tuned on ImageNet-22k) + UperNet, ADE20K 640x640, 160k updates of
# batch 16 (8 GPUs x 1 image, gradients accumulated over 2 iterations).
#
# Source: microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/
# upernet_beit_large_24_640_slide_160k_ade20k_pt2ft.py (BEiT paper, Table 3,
# "BEiT-L" row), as in MMSegmentation's
# configs/beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py: its lr,
# layer decay, drop path and layer scale (below), fp16, and
# samples_per_gpu=1 with update_interval=2 over schedule_320k.
#
# The official (MMCV 1.x) runner counts the warmup and the poly decay in
# iterations, over all 320k of them, so warmup = 3000 and the poly ends at
# 320000. (MMSegmentation's port ends the poly at 160000, after which the lr
# stays 0 for the second half of the run; not followed here.)
_base_ = [
    './_base_/upernet_beit-base.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
]
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='large',
        img_size=crop_size,
        out_indices=(7, 11, 15, 23),
        drop_path_rate=0.2,
        layer_scale_init_value=1e-6,
        # Placeholder: beit_large_patch16_224_pt22k_ft22k (official release
        # or timm `beit_large_patch16_224.in22k_ft_in22k`), converted with
        # beit_plugin.convert.convert_state_dict(..., source='timm') and saved
        # with the keys prefixed by 'backbone.'.
        init_cfg=dict(
            checkpoint='checkpoints/beit_large_patch16_224_pt22k_ft22k.pth')),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
optim_wrapper = dict(
    optimizer=dict(lr=2e-5),
    paramwise_cfg=dict(layer_decay_rate=0.95),
    accumulative_counts=2)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=3000),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=3000,
        end=320000),
]
train_cfg = dict(max_iters=320000, val_interval=32000)
default_hooks = dict(checkpoint=dict(interval=32000))

# 8 GPUs with 1 image per GPU, 2 iterations per update
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
