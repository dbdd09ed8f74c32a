# VQ-KD tokenizer of BEiT v2 on ImageNet-1k with the CLIP ViT-B/16 teacher:
# the official recipe (`run_vqkd_training.py` with
# `vqkd_encoder_base_decoder_3x768x12_clip`): EMA codebook with k-means init,
# cosine loss to CLIP's projected patch features, an effective batch of 512
# (8 GPUs x 64); the official lr is 5e-5 per 128 images, hence the lr below
# for 512 (auto_scale_lr's base batch).
#
# Teacher weights are read from a local file, never downloaded:
# `checkpoints/clip-vit-base-p16_openai_mmpretrain.pth`, OpenAI's CLIP
# ViT-B/16 (`ViT-B-16.pt`) converted by MMPretrain's
# `tools/model_converters/openai-clip_to_mmpretrain-clip.py`: the image tower
# as MMPretrain's `VisionTransformer` under `visual.`, the (768, 512)
# projection as `visual_proj.proj`. Point `clip_checkpoint` (and the
# teacher's `backbone_prefix` / `projection_key`) at your own copy.
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

clip_checkpoint = 'checkpoints/clip-vit-base-p16_openai_mmpretrain.pth'
vit_base = dict(
    embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072)

model = dict(
    type='VQKDTokenizer',
    encoder=dict(arch=vit_base, img_size=224, patch_size=16),
    decoder=dict(arch=dict(vit_base, num_layers=3)),
    teacher=dict(
        type='BackboneTeacher',
        backbone=dict(
            type='VisionTransformer',
            arch='base',
            img_size=224,
            patch_size=16,
            pre_norm=True,
            final_norm=True,
            out_type='raw',
            layer_cfgs=dict(act_cfg=dict(type='QuickGELU'))),
        out_channels=512,
        checkpoint=clip_checkpoint,
        backbone_prefix='visual.',
        projection_key='visual_proj.proj',
        input_size=224,
        mean=(122.770938, 116.7460125, 104.09373615),
        std=(68.5005327, 66.6321579, 70.32316305)),
    num_embed=8192,
    embed_dims=32,
    beta=1.0,
    decay=0.99,
    kmeans_init=True,
    restart_dead_codes=False)

data_root = 'data/imagenet/'
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.08, 1.0),
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ImageNet',
        data_root=data_root,
        split='train',
        pipeline=train_pipeline))

max_epochs = 100
warmup_epochs = 10
optim_wrapper = dict(
    # one log line for the frozen teacher instead of a warning per tensor
    constructor='beit_plugin.FrozenParamsOptimWrapperConstructor',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.99), weight_decay=1e-4,
        fused=True),
    # The official VQ-KD recipe (beit2 optim_factory.get_parameter_groups
    # with the model's no_weight_decay()) decays no 1-d parameter (norms,
    # biases, q_bias / v_bias, layer scales) and neither token nor position
    # embedding; bias_decay_mult would miss q_bias / v_bias.
    paramwise_cfg=dict(
        flat_decay_mult=0.,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6 / 2e-4,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=512)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', interval=20,
                    max_keep_ckpts=2))
custom_hooks = [dict(type='CodebookUsageHook', window=100),
                dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
# a fixed seed: MMEngine seeds the data sampler and the loader workers
# before it reads a checkpoint, so --resume is exact only with the seed the
# run started with (randomness.seed=None draws a new one)
randomness = dict(seed=0)
# CodebookUsageHook averages over its own window: log its last value
log_processor = dict(custom_cfg=[
    dict(data_src='codebook/usage', method_name='mean', window_size=1),
    dict(data_src='codebook/perplexity', method_name='mean', window_size=1),
])
