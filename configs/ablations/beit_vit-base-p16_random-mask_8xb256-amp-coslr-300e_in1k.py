# BEiT ablation "w/o blockwise masking" (paper Table 4), full size: the
# 300-epoch reference with the same number of patches (about 40 % of the
# grid) masked uniformly at random.
#
#   bash tools/dist_train.sh configs/ablations/beit_vit-base-p16_random-mask_8xb256-amp-coslr-300e_in1k.py 8
_base_ = './beit_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'

img_size = 224
patch_size = 16
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=img_size,
         second_size=img_size // 2, interpolation='bicubic',
         second_interpolation='lanczos', scale=(0.08, 1.0)),
    dict(type='beit_plugin.BlockwiseMaskGenerator',
         input_size=img_size // patch_size, num_masking_patches=75,
         mask_mode='random'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
