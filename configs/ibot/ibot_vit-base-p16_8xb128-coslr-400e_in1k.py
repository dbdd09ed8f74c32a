# iBOT pretraining of ViT-B/16 on ImageNet-1k (Zhou et al., "iBOT: Image
# BERT Pre-Training with Online Tokenizer", https://arxiv.org/abs/2111.07832),
# the paper's recipe on our BEiT backbone: the target generator is an EMA
# teacher (momentum on a cosine schedule), CLS self-distillation across the
# two global views plus masked-patch self-distillation within each view;
# global and local multi-crop views; blockwise masks per global view, half
# the views masked with a ratio drawn from mask_ratio (official pred_ratio
# 0 0.3, pred_ratio_var 0 0.2); a shared projection head (weight-normalised
# last layer with its norm fixed, frozen for the first epoch); teacher
# temperatures warmed up for CLS and patches alike; an effective batch of
# 1024 (8 GPUs x 128) with the official lr scaled by batch / 256, linear
# warmup then cosine, weight decay on a cosine schedule, drop path on the
# student only, mixed precision (the base's AmpOptimWrapper).
#
# Sources: bytedance/ibot main_ibot.py (argument defaults, schedules,
# get_params_groups, DataAugmentationiBOT) and README (the ViT-S/16 command).
# The ViT-B/16 args.txt of the official checkpoint is not in the repository;
# its ViT-B-specific values here (crop scales 0.32 / 0.05-0.32, teacher
# temperature warm-up 50 epochs, norm_last_layer true, 400 epochs, batch
# 1024) are those of iBOT-derived ViT-B commands, and the rest are
# main_ibot.py's defaults. Those derived commands (and DINO's ViT-B/16)
# also use lr 7.5e-4, min_lr 2e-6, clip_grad 0.3 and freeze_last_layer 3:
# check against the args file before a full run.
#
# Differences from the official code, all deliberate: the backbone is our
# BEiT (relative position bias shared by the blocks where the official ViT
# has absolute positions, layer scale 0.1 where it has none, q and v biases
# where it has q, k and v biases), so that an iBOT checkpoint loads into
# every fine-tuning, linear-probe and segmentation config of this
# repository; schedules are per iteration (the official teacher
# temperature steps once an epoch; its lr, weight decay and momentum are
# per iteration as here); the teacher's head is a copy of the student's
# (the official teacher always shares its last layer: the same with
# shared_head=True, as here). Not expressible with MMEngine's clip_grad:
# the official clip_gradients clips each parameter tensor's gradient to
# norm 3.0 on its own; clip_grad=dict(max_norm=3.0) clips the global norm
# of all of them, a tighter clip.
#
# Data and the multi-crop pipeline: data/imagenet with meta/train.txt (the
# base's ImageNet); every view normalised with the ImageNet mean / std.
#
#   bash tools/dist_train.sh configs/ibot/ibot_vit-base-p16_8xb128-coslr-400e_in1k.py 8
#
# Downstream, the student (prefix backbone., the default) or the teacher
# (--cfg-options model.backbone.init_cfg.prefix=teacher.backbone.; the
# official iBOT numbers are the teacher's) of the last checkpoint:
#
#   bash tools/dist_train.sh configs/finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k.py 8 --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/ibot_vit-base-p16_8xb128-coslr-400e_in1k/epoch_400.pth
_base_ = '../beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'

img_size = 224
local_size = 96
patch_size = 16
num_local_views = 10
embed_dims = 768
out_channels = 8192
batch_size = 128  # per GPU, 8 GPUs
iters_per_epoch = 1281167 // (8 * batch_size)  # drop_last: 1251
max_epochs = 400
warmup_epochs = 10

model = dict(
    _delete_=True,
    type='beit_plugin.iBOTPretrainer',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch='base',
        img_size=img_size,
        patch_size=patch_size,
        drop_path_rate=0.1,  # the student's; the teacher runs in eval mode
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        use_mask_token=True,
        init_mode='modeling_pretrain',
        layer_scale_init_value=0.1,
        final_norm=True,
        out_type='raw'),
    head=dict(
        type='beit_plugin.iBOTProjectionHead',
        in_channels=embed_dims,
        out_channels=out_channels,
        shared_head=True,
        num_layers=3,
        hidden_channels=2048,
        bottleneck_channels=256,
        norm_last_layer=True),
    distill_loss=dict(
        type='beit_plugin.iBOTLoss',
        out_channels=out_channels,
        num_global_views=2,
        student_temp=0.1,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_patch_temp=0.04,
        teacher_patch_temp=0.07,
        warmup_iters=50 * iters_per_epoch,
        center_momentum=0.9,
        center_momentum2=0.9,
        lambda1=1.0,
        lambda2=1.0),
    freeze_last_layer_iters=iters_per_epoch,
    data_preprocessor=dict(
        type='SelfSupDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True))


def _view(size, scale, blur, solarize):
    """iBOT's (DINO's) augmentation of one view."""
    return [
        dict(type='RandomResizedCrop', scale=size, crop_ratio_range=scale,
             backend='pillow', interpolation='bicubic'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='RandomApply',
             transforms=[dict(type='ColorJitter', brightness=0.4,
                              contrast=0.4, saturation=0.2, hue=0.1)],
             prob=0.8),
        dict(type='RandomGrayscale', prob=0.2, keep_channels=True,
             channel_weights=(0.114, 0.587, 0.2989)),
        dict(type='GaussianBlur', magnitude_range=(0.1, 2.0),
             magnitude_std='inf', prob=blur),
        dict(type='Solarize', thr=128, prob=solarize),
    ]


train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='MultiView',
         num_views=[1, 1, num_local_views],
         transforms=[_view(img_size, (0.32, 1.), 1.0, 0.),
                     _view(img_size, (0.32, 1.), 0.1, 0.2),
                     _view(local_size, (0.05, 0.32), 0.5, 0.)]),
    # (scoped: the dataset inherited from MMPretrain builds its pipeline in
    # the mmpretrain scope)
    dict(type='beit_plugin.MultiViewBlockwiseMaskGenerator',
         input_size=img_size // patch_size, num_views=2,
         mask_ratio=(0.1, 0.5), mask_prob=0.5),
    dict(type='PackInputs'),
]
del _view
train_dataloader = dict(batch_size=batch_size, drop_last=True,
                        dataset=dict(pipeline=train_pipeline))

# The official get_params_groups: no weight decay for 1-d parameters and
# biases (here also the BEiT backbone's q/v biases and layer scales), decay
# for the rest (cls token, mask token and relative position table included).
optim_wrapper = dict(
    constructor='beit_plugin.FrozenParamsOptimWrapperConstructor',
    optimizer=dict(lr=5e-4 * 8 * batch_size / 256, betas=(0.9, 0.999),
                   weight_decay=0.04),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'q_bias': dict(decay_mult=0.),
            'v_bias': dict(decay_mult=0.),
            'gamma_': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    # 0.04 -> 0.4 where the group decays (eta_min_ratio keeps 0 at 0)
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay',
         eta_min_ratio=10., by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
custom_hooks = [
    # teacher <- m teacher + (1 - m) student after every step
    dict(type='beit_plugin.EMATeacherHook', momentum=0.996, end_momentum=1.),
    dict(type='beit_plugin.NonFiniteCheckHook'),
    dict(type='beit_plugin.RNGStateHook'),
]
# the head's last layer gets no gradient in the first epoch
find_unused_parameters = True
