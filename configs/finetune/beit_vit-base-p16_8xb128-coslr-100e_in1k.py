# BEiT (v1) ViT-B/16 fine-tuning on ImageNet-1k, the paper's recipe for a
# model pretrained on ImageNet only (the official fine-tuning command in
# unilm/beit/get_started_for_image_classification.md, "BEiT-base"; the same
# values as MMPretrain's configs/beit/benchmarks/
# beit-base-p16_8xb128-coslr-100e_in1k.py): an effective batch of 1024
# (8 GPUs x 128) with the official lr as is (no batch scaling), layer-wise
# lr decay, linear warmup then cosine, RandAugment (rand-m9-mstd0.5-inc1)
# and random erasing (from the MMPretrain base's pipeline), mixup, cutmix,
# label smoothing; the classifier reads the mean of the patch tokens after
# a LayerNorm (`fc_norm`), without a final norm.
#
# The pretrained backbone: `pretrained` below, a checkpoint whose state_dict
# has `backbone.*` keys in our names -- what
# configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py writes, or an
# official checkpoint converted with tools/convert_checkpoint.py. Replace the
# placeholder path (or pass --cfg-options
# model.backbone.init_cfg.checkpoint=PATH). The relative position bias shared
# by all blocks in pretraining is copied into one table per block at load
# time.
#
# Data: data/imagenet as MMPretrain's ImageNet (meta/train.txt, meta/val.txt).
# Normalisation: ImageNet mean/std, as our pretraining recipes (from
# MMPretrain's configs). Official BEiT v1 weights were pretrained with the
# Inception mean/std (0.5, 0.5, 0.5): for those set
# data_preprocessor.mean/std to 127.5 as MMPretrain's benchmark does.
#
#   bash tools/dist_train.sh configs/finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k.py 8
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

pretrained = 'checkpoints/beit_vit-base-p16_in1k-pretrain.pth'  # placeholder
arch = 'base'
embed_dims = 768
num_classes = 1000
img_size = 224
patch_size = 16
drop_path_rate = 0.1
layer_scale_init_value = 0.1  # replaced by the checkpoint's values
layer_decay_rate = 0.65
lr = 4e-3
max_epochs = 100
warmup_epochs = 20

data_preprocessor = dict(num_classes=num_classes)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch=arch,
        img_size=img_size,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        out_type='avg_featmap',  # mean of the patch tokens, then fc_norm
        final_norm=False,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
        use_shared_rel_pos_bias=False,
        layer_scale_init_value=layer_scale_init_value,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained,
                      prefix='backbone.')),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=embed_dims,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                  mode='original'),
        # the official head: trunc_normal(std=0.02) scaled by init_scale 1e-3
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=2e-5,
                       bias=0.)]),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]))

# The pipelines of MMPretrain's imagenet_bs64_swin_224 base are the official
# ones (RandomResizedCrop 224 bicubic, flip, RandAugment, RandomErasing 0.25;
# test: resize the short edge to 256, center crop 224).
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# Layer-wise lr decay and the official classification recipe's weight decay
# (unilm beit/run_class_finetuning.py and beit2/run_class_finetuning.py:
# get_parameter_groups of optim_factory.py with the model's no_weight_decay()
# as skip list): none on 1-d parameters, biases, pos_embed and cls_token; the
# per-block relative position tables are decayed, as the published commands
# (without --disable_weight_decay_on_rel_pos_bias) have it. That flag is
#   --cfg-options "optim_wrapper.paramwise_cfg.no_decay_names=[pos_embed,cls_token,blocks.*.attn.relative_position_bias_table]"
optim_wrapper = dict(
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05,
                   betas=(0.9, 0.999), fused=True),
    # scoped: the optim_wrapper dict comes from an MMPretrain base
    constructor='beit_plugin.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=layer_decay_rate,
                       no_decay_names=('pos_embed', 'cls_token')))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
default_hooks = dict(
    # complete checkpoints or none; old ones deleted once the new one is in
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', interval=1,
                    max_keep_ckpts=2, save_best='auto'))
# stop at a NaN / infinite loss or gradient norm; never save such weights
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
randomness = dict(seed=0)
