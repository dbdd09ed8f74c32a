# BEiT ablation "recover masked pixels" (paper Table 4), full size: the
# 300-epoch reference (blockwise masking) regressing each masked patch's
# pixels, standardised per patch, instead of classifying its DALL-E token.
# The second view is the full-size crop (the target's patch grid is the
# backbone's), so no tokenizer is loaded.
#
#   bash tools/dist_train.sh configs/ablations/beit_vit-base-p16_pixel_8xb256-amp-coslr-300e_in1k.py 8
_base_ = './beit_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'

img_size = 224
patch_size = 16
model = dict(
    head=dict(_delete_=True, type='beit_plugin.PixelRegressionHead', in_channels=768,
              out_channels=patch_size * patch_size * 3),
    target_generator=dict(_delete_=True, type='beit_plugin.PatchPixels',
                          patch_size=patch_size))
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=img_size,
         second_size=img_size, interpolation='bicubic',
         second_interpolation='bicubic', scale=(0.08, 1.0)),
    dict(type='beit_plugin.BlockwiseMaskGenerator',
         input_size=img_size // patch_size, num_masking_patches=75,
         min_num_patches=16, max_num_patches=None),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
