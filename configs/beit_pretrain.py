# The embedded default: BEiT v2-style masked image modeling of a small BEiT on
# the demo data (generated on first use under data/demo), on CPU.
#
#   python tools/train.py configs/beit_pretrain.py
#
# Targets come from the demo VQ-KD tokenizer shipped in checkpoints/, which
# `python tools/train.py configs/vqkd/vqkd_demo_hog.py` produced (see docs/targets.md, Tokenizers).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs256_beitv2.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

img_size = 64
patch_size = 8
grid = img_size // patch_size  # 8 x 8 patches
# shipped beside the configs (the repository's checkpoints/, or the installed
# package's .mim/checkpoints/), found from any working directory
tokenizer_checkpoint = '{{fileDirname}}/../checkpoints/vqkd_demo_hog.pth'
arch = dict(embed_dims=192, num_layers=6, num_heads=6,
            feedforward_channels=768)
early_layers = 4

model = dict(
    type='beit_plugin.BEiTPretrainer',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch=arch,
        img_size=img_size,
        patch_size=patch_size,
        out_indices=(early_layers - 1, -1),
        final_norm=False,  # v2: the norm is shared with the neck's branch
        use_mask_token=True,
        # the official pretraining init (modeling_pretrain.py, _init_weights):
        # std 0.02 truncated at +-0.02, the patch-embedding conv included
        init_mode='modeling_pretrain',
        use_shared_rel_pos_bias=True,
        layer_scale_init_value=0.1),
    neck=dict(
        type='beit_plugin.BEiTV2PatchAggregation',
        embed_dims=arch['embed_dims'],
        num_heads=arch['num_heads'],
        feedforward_channels=arch['feedforward_channels'],
        num_layers=2,
        early_layers=early_layers,
        backbone_layers=arch['num_layers'],
        layer_scale_init_value=0.1),
    head=dict(type='beit_plugin.BEiTMIMHead', in_channels=arch['embed_dims'],
              num_embed=512),
    target_generator=dict(
        type='beit_plugin.VQKDTokenizer',
        encoder=dict(
            arch=dict(embed_dims=128, num_layers=4, num_heads=4,
                      feedforward_channels=512),
            img_size=img_size,
            patch_size=patch_size),
        num_embed=512,
        embed_dims=32,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=tokenizer_checkpoint)),
    data_preprocessor={{_base_.data_preprocessor}})

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=img_size,
         second_size=img_size, interpolation='bicubic',
         second_interpolation='bicubic', scale=(0.2, 1.0)),
    # scoped names: the dataloader inherited from MMPretrain's base config
    # builds its dataset and pipeline in the mmpretrain scope
    dict(type='beit_plugin.BlockwiseMaskGenerator', input_size=grid,
         num_masking_patches=26, min_num_patches=4, fixed_count=True),
    dict(type='PackInputs'),
]
# the base's collate_fn carries _scope_='mmpretrain', which MMEngine's
# Runner.build_dataloader would pass to default_collate; ours drops it
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    collate_fn=dict(type='beit_plugin.default_collate'),
    dataset=dict(
        type='beit_plugin.DemoImageNet',  # generates data/demo
        data_root='data/demo/imagenet',
        pipeline=train_pipeline))

# under 15 minutes on a slow 2-core CPU (docs/benchmarks.md), long enough
# for the downstream demos to gain from it (README, The three jobs on the demo)
max_iters = 800
warmup_iters = 100
optim_wrapper = dict(
    type='OptimWrapper',
    # one log line for the frozen tokenizer instead of a warning per tensor
    constructor='beit_plugin.FrozenParamsOptimWrapperConstructor',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.999),
                   weight_decay=0.05, fused=True),
    clip_grad=dict(max_norm=3.0),
    # the official pretraining's weight decay: see the comment in
    # configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'q_bias': dict(decay_mult=0.),
            'v_bias': dict(decay_mult=0.),
            'gamma_': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # complete checkpoints or none; old ones deleted once the new one is in
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', interval=500,
                    by_epoch=False, max_keep_ckpts=2, save_last=True))
# stop at a NaN / infinite loss or gradient norm; never save such weights
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
