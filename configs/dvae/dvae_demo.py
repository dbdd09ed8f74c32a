# Discrete VAE (BEiT v1 tokenizer) on the demo data: runs on a CPU.
#
#   python tools/make_demo_data.py                  # writes data/demo once
#   python tools/train.py configs/dvae/dvae_demo.py
#   python tools/visualize_dvae.py configs/dvae/dvae_demo.py \
#       work_dirs/dvae_demo/iter_2000.pth --out recon.png
#
# 64 x 64 px images, 3 stride-2 stages: an 8 x 8 token map, as a BEiT with
# 8 px patches sees the same image. The codebook size follows the reasons
# given in configs/vqkd/vqkd_demo_hog.py. The anneal rate takes the
# Gumbel-softmax temperature to its minimum by the end of the run
# (exp(-3.5e-4 * 2000) = 0.5).
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

img_size = 64
batch_size = 32
num_layers = 3  # stride-2 stages
grid = img_size // 2**num_layers
model = dict(
    type='DiscreteVAE',
    num_tokens=512,
    codebook_dim=128,
    num_layers=num_layers,
    hidden_dims=64,
    temperature=1.0,
    min_temperature=0.5,
    anneal_rate=3.5e-4,
    straight_through=False,
    # KL(q || uniform) is the official sum over codes, positions and the
    # batch (see DiscreteVAE). This demo weighted its mean over the
    # 32 x 8 x 8 = 2048 positions of a batch by 1e-3; the same effective KL
    # on the sum is 1e-3 / 2048 = 4.8828125e-7 (tied to batch_size: scale it
    # with the batch to keep the balance with the per-pixel mean recon loss)
    kl_div_loss_weight=1e-3 / (batch_size * grid * grid),
    recon_loss='smooth_l1')

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
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ImageNet',
        data_root=data_root,
        split='train',
        pipeline=train_pipeline))
max_iters = 2000
optim_wrapper = dict(
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.99),
                   weight_decay=0., fused=True))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=False,
        begin=0,
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
