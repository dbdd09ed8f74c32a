# Fine-tuning on a classification set of your own in the ImageFolder layout,
# any image size, any number of classes:
#
#   data_root/train/<class>/*.jpg   (or .jpeg .png .ppm .bmp .pgm .tif, also
#   data_root/val/<class>/*.jpg      in subfolders of a class folder)
#
# The classes are the class folders, in sorted order; train/ and val/ must
# hold the same ones. Set data_root and num_classes below, then
#
#   python tools/train.py configs/own_data/beit_demo_finetune_imagefolder.py
#
# A num_classes that is not the number of class folders is refused before
# training, with the folder, its classes and the value to set
# (beit_plugin.ClassCountCheckHook, in the demo config's custom_hooks).
#
# The demo fine-tuning (configs/finetune/beit_demo_finetune.py: the small
# BEiT, its schedule) of the demo pretraining on your images (`pretrained`
# below, which configs/own_data/beit_demo_pretrain_images.py writes). The
# pipelines are the full recipe's scaled to the demo backbone's input size,
# so that images of any size come out at that size: a random resized crop
# and a flip for training, the short side resized (the full recipe's
# 256 : 224) and the centre cropped for validation.
_base_ = '../finetune/beit_demo_finetune.py'

data_root = 'data/my_imagefolder'
num_classes = 8  # the number of class folders (the demo set's: 8)

# from configs/own_data/beit_demo_pretrain_images.py (the demo's:
# work_dirs/beit_pretrain/iter_800.pth; none: model.backbone.init_cfg=None)
pretrained = 'work_dirs/beit_demo_pretrain_images/iter_800.pth'

data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(init_cfg=dict(checkpoint=pretrained)),
    head=dict(num_classes=num_classes))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    # MMPretrain's own, which its inferencers replace for in-memory images
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=73, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,  # the demo's DemoImageNet arguments
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1, 5) if num_classes >= 5 else (1, ))
test_evaluator = val_evaluator
