# VQ-KD tokenizer training on the demo data with the weight-free HOG teacher:
# runs on a CPU, nothing downloaded.
#
#   python tools/train.py configs/vqkd/vqkd_demo_hog.py
#   python tools/export_tokenizer.py work_dirs/vqkd_demo_hog/iter_2000.pth \
#       checkpoints/vqkd_demo_hog.pth
#
# The second line keeps the tokenizer's weights only (no teacher, no
# optimizer): that is the file configs/beit_pretrain.py loads.
#
# Codebook usage (`codebook/usage`: fraction of the codes used over the
# hook's window; `codebook/perplexity`) is logged by CodebookUsageHook.
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

# Codebook size: 512 codes, not the 8192 of ImageNet. A demo image is
# 64 x 64 px, 64 patches of 8 x 8 px; the 1600 training images hold 102,400
# patches an epoch, drawn from 8 shapes over 4 background textures. A step of
# 32 images quantizes 2,048 patches: with 512 codes that is 4 per code per
# step on average and ~400 per code over the 100-iteration usage window, so
# an unused code is a real failure, not a sampling gap, and the first batch
# (2,048 vectors) suffices for the k-means initialisation (4 per centre). With
# 8192 codes a code would see 12 patches an epoch (0.25 a step), k-means would
# start from fewer vectors than centres, and most codes would look idle in
# any window even with a perfectly uniform distribution.
num_embed = 512
img_size = 64
patch_size = 8

model = dict(
    type='VQKDTokenizer',
    encoder=dict(
        arch=dict(
            embed_dims=128,
            num_layers=4,
            num_heads=4,
            feedforward_channels=512),
        img_size=img_size,
        patch_size=patch_size),
    decoder=dict(
        arch=dict(
            embed_dims=128,
            num_layers=2,
            num_heads=4,
            feedforward_channels=512)),
    # 3 channels x 9 orientation bins x 2 x 2 cells of 4 x 4 px = 108-d
    # gradients, plus 3 x 8 colour levels = 132-d. Gradients alone make
    # tokens that neighbouring patches do not predict (mean cosine of the
    # teacher features of horizontal neighbours 0.10 on the demo val set;
    # a tokenizer trained on them gave a patch its left neighbour's token
    # 1.5 % of the time, and masked image modeling on those tokens moved its
    # loss from 6.20 to 6.12 in 1200 iterations, ln 512 = 6.24). With the
    # colour part the neighbour cosine is 0.48 (0.13 for random pairs).
    teacher=dict(type='HOGTeacher', num_bins=9, cells_per_side=2,
                 colour_bins=8, colour_weight=0.5),
    num_embed=num_embed,
    embed_dims=32,
    beta=1.0,
    decay=0.99,
    kmeans_init=True,
    # Re-seed codes whose EMA usage falls under 10 % of the mean usage with
    # vectors of the current batch. Without it this run collapses: the
    # k-means codebook fits the random encoder of step 0, the encoder moves
    # away, and the codes used in the last 100 iterations fall to 29 % by
    # iteration 400 (37 % at the end, perplexity 162); with it, 100 % from
    # iteration 800 on (CPU run, seed 0). The official codebook update is
    # not the cause: the taming-style update (code = direction of the EMA of
    # its vector sums) collapses further, to 21 % (perplexity 98).
    restart_dead_codes=True,
    dead_code_threshold=0.1)

data_root = 'data/demo/imagenet/'
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=img_size,
        crop_ratio_range=(0.5, 1.0),
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='DemoImageNet',  # mmpretrain's ImageNet; generates data/demo
        data_root=data_root,
        split='train',
        pipeline=train_pipeline))

max_iters = 2000
warmup_iters = 100
optim_wrapper = dict(
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(
        type='AdamW', lr=5e-4, betas=(0.9, 0.99), weight_decay=1e-4,
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
        start_factor=1e-2,
        by_epoch=False,
        begin=0,
        end=warmup_iters),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(
        type='beit_plugin.AtomicCheckpointHook', interval=500, by_epoch=False,
        max_keep_ckpts=2))
custom_hooks = [dict(type='CodebookUsageHook', window=100),
                dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
log_processor = dict(
    by_epoch=False,
    # CodebookUsageHook averages over its own window: log its last value
    custom_cfg=[
        dict(data_src='codebook/usage', method_name='mean',
             window_size=1),
        dict(data_src='codebook/perplexity', method_name='mean',
             window_size=1),
    ])
randomness = dict(seed=0)
