# BEiT ablation "blockwise vs random masking", demo size: the embedded default
# (configs/beit_pretrain.py) with the same number of masked patches drawn
# uniformly instead of in blocks. Evaluate it by fine-tuning:
#
#   python tools/train.py configs/ablations/beit_demo_pretrain_random-mask.py
#   python tools/train.py configs/finetune/beit_demo_finetune.py --work-dir work_dirs/beit_demo_finetune_random-mask --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/beit_demo_pretrain_random-mask/iter_800.pth
_base_ = '../beit_pretrain.py'

# the base's pipeline with the mask generator's mode changed

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic',
         size=64, second_size=64,
         interpolation='bicubic', second_interpolation='bicubic',
         scale=(0.2, 1.0)),
    dict(type='beit_plugin.BlockwiseMaskGenerator',
         input_size=8, num_masking_patches=26,
         mask_mode='random'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
