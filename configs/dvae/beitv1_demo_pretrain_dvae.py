# BEiT v1-style masked image modeling, demo size: the embedded default's
# backbone, data and budget (configs/beit_pretrain.py) with BEiT v1's parts:
# the demo dVAE as the tokenizer (stage one, configs/dvae/dvae_demo.py, its
# tokens on the same patch grid), no patch-aggregation branch (the last
# block's tokens, its final LayerNorm, into the token classifier) and v1's
# blockwise masks (no top-up to an exact count). One of the four targets of
# the demo comparison in docs/targets.md (v1 dVAE, v2 VQ-KD, pixels, iBOT-style):
#
#   python tools/train.py configs/dvae/dvae_demo.py
#   python tools/train.py configs/dvae/beitv1_demo_pretrain_dvae.py
_base_ = '../beit_pretrain.py'

tokenizer_checkpoint = 'work_dirs/dvae_demo/iter_2000.pth'
grid = 8

model = dict(
    backbone=dict(out_indices=-1, final_norm=True),
    neck=None,
    target_generator=dict(
        _delete_=True,
        type='beit_plugin.DiscreteVAE',
        # configs/dvae/dvae_demo.py's model
        num_tokens=512,
        codebook_dim=128,
        num_layers=3,
        hidden_dims=64,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=tokenizer_checkpoint)))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=64,
         second_size=64, interpolation='bicubic',
         second_interpolation='bicubic', scale=(0.2, 1.0)),
    dict(type='beit_plugin.BlockwiseMaskGenerator', input_size=grid,
         num_masking_patches=26, min_num_patches=4, fixed_count=False),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
