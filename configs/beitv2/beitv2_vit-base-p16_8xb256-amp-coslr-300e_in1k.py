# BEiT v2 pretraining of ViT-B/16 on ImageNet-1k, the paper's 300-epoch
# recipe: VQ-KD tokenizer (CLIP ViT-B/16 teacher), blockwise masking, patch
# aggregation (the last layer's CLS token with an early layer's patches
# through a small head that shares the MIM classifier), one shared relative
# position bias, mixed precision; an effective batch of 2048 (8 GPUs x 256).
# The AdamW betas are the official 300-epoch ones (the 1600-epoch recipe
# changes them).
#
# Data, pipeline and optimizer come from MMPretrain's BEiT v2 config
# (data/imagenet, both views the same size, the second in [-1, 1] for the
# tokenizer; AdamW lr 1.5e-3, weight decay 0.05, gradient clipping 3.0, as
# the paper); the model, the masking, the parameter groups and the schedule
# are set here.
#
# The tokenizer: a VQ-KD encoder in our layout in
# checkpoints/vqkd_vit-base-p16_clip-teacher_in1k.pth, from
# configs/vqkd/vqkd_vit-base-p16_clip-teacher_in1k.py (then
# tools/export_tokenizer.py --encoder-only) or converted from the official
# weights with tools/convert_checkpoint.py.
#
#   bash tools/dist_train.sh configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py 8
_base_ = 'mmpretrain::beitv2/beitv2_beit-base-p16_8xb256-amp-coslr-300e_in1k.py'
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

tokenizer_checkpoint = 'checkpoints/vqkd_vit-base-p16_clip-teacher_in1k.pth'
img_size = 224
patch_size = 16
arch = 'base'
embed_dims = 768
num_layers = 12
early_layers = 9  # the aggregation branch takes this layer's patches
drop_path_rate = 0.
layer_scale_init_value = 0.1

model = dict(
    _delete_=True,
    type='beit_plugin.BEiTPretrainer',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch=arch,
        img_size=img_size,
        patch_size=patch_size,
        out_indices=(early_layers - 1, -1),
        drop_path_rate=drop_path_rate,
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        use_mask_token=True,
        # the official pretraining init (modeling_pretrain.py, _init_weights):
        # std 0.02 truncated at +-0.02, the patch-embedding conv included
        init_mode='modeling_pretrain',
        layer_scale_init_value=layer_scale_init_value,
        final_norm=False,  # the norm is shared with the aggregation branch
        out_type='raw'),
    neck=dict(
        type='beit_plugin.BEiTV2PatchAggregation',
        embed_dims=embed_dims,
        num_heads=embed_dims // 64,
        feedforward_channels=embed_dims * 4,
        num_layers=2,
        early_layers=early_layers,
        backbone_layers=num_layers,
        drop_path_rate=drop_path_rate,
        layer_scale_init_value=layer_scale_init_value),
    head=dict(type='beit_plugin.BEiTMIMHead', in_channels=embed_dims, num_embed=8192),
    target_generator=dict(
        type='beit_plugin.VQKDTokenizer',
        encoder=dict(arch='base', img_size=img_size, patch_size=patch_size),
        num_embed=8192,
        embed_dims=32,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=tokenizer_checkpoint)))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=img_size,
         second_size=img_size, interpolation='bicubic',
         second_interpolation='bicubic', scale=(0.2, 1.0)),
    # (scoped: the dataset inherited from MMPretrain builds its pipeline in
    # the mmpretrain scope)
    # always exactly num_masking_patches, as beit2/masking_generator.py tops
    # up (or trims) each blockwise mask
    dict(type='beit_plugin.BlockwiseMaskGenerator',
         input_size=img_size // patch_size, num_masking_patches=75,
         min_num_patches=16, max_num_patches=None, fixed_count=True),
    dict(type='PackInputs'),
]
# the base's collate_fn carries _scope_='mmpretrain', which MMEngine's
# Runner.build_dataloader would pass to default_collate; ours drops it
train_dataloader = dict(
    collate_fn=dict(type='beit_plugin.default_collate'),
    dataset=dict(pipeline=train_pipeline))

# No weight decay where the official code has none (run_beit*_pretraining.py:
# create_optimizer of optim_factory.py, skip list = the pretraining model's
# no_weight_decay()): 1-d parameters (norms, biases, q/v biases, layer
# scales) and pos_embed / cls_token. The mask token and the shared relative
# position table are decayed, as there.
optim_wrapper = dict(
    # one log line for the frozen tokenizer instead of a warning per tensor
    constructor='beit_plugin.FrozenParamsOptimWrapperConstructor',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(betas=(0.9, 0.98), fused=True),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'q_bias': dict(decay_mult=0.),
            'v_bias': dict(decay_mult=0.),
            'gamma_': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
        }))

max_epochs = 300
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# the base's checkpoints, written atomically; stop at a NaN / infinite loss
default_hooks = dict(checkpoint=dict(type='beit_plugin.AtomicCheckpointHook'))
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
# the tokenizer has no gradients; every trained parameter is used
find_unused_parameters = False
