# UperNet segmentation on a set of your own in the ADE20K layout, any image
# size, your own classes:
#
#   data_root/images/training/<name>.jpg     data_root/annotations/training/<name>.png
#   data_root/images/validation/<name>.jpg   data_root/annotations/validation/<name>.png
#
# Each annotation is a one-channel PNG (grayscale or palette) of the image's
# size whose pixel values are class numbers as in ADE20K: 0 = not labelled
# (ignored), 1 = classes[0], 2 = classes[1], ... Set data_root and classes
# below, then
#
#   python tools/train.py configs/own_data/beit_demo_upernet_ade-layout.py
#
# An image or training annotation that cannot be read, an annotation in
# colour, of another size than its image or with a value past the class list
# is refused, naming the file (beit_plugin.CheckedLoadAnnotations; validation
# keeps MMSegmentation's LoadAnnotations, which its inference_model removes
# by that name).
#
# The demo UperNet (configs/seg/beit_demo_upernet.py: the small BEiT, its
# rescaling, crops and schedule) of the demo pretraining on your images
# (`pretrained` below, which configs/own_data/beit_demo_pretrain_images.py
# writes); only the data set changes. MMSegmentation's ADE20KDataset accepts
# ADE20K's 150 classes only, hence BaseSegDataset.
_base_ = '../seg/beit_demo_upernet.py'

data_root = 'data/my_ade'
# in label order; these are the demo set's (tools/make_demo_data.py)
classes = ('background', 'bar', 'circle', 'crescent', 'cross', 'ring',
           'square', 'star', 'triangle')
num_classes = len(classes)

# from configs/own_data/beit_demo_pretrain_images.py (the demo's:
# work_dirs/beit_pretrain/iter_800.pth; none: model.backbone.init_cfg=None)
pretrained = 'work_dirs/beit_demo_pretrain_images/iter_800.pth'

model = dict(
    backbone=dict(init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

# the demo's training pipeline but for the annotation check against this
# class list (reduce_zero_label comes from the data set); testing keeps the
# demo's test_pipeline (MMSegmentation's own loaders, which its
# inference_model replaces)
train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='beit_plugin.CheckedLoadAnnotations', num_classes=num_classes),
    dict(
        type='RandomResize',
        scale=(384, 96),
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=(64, 64), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
seg_dataset = dict(
    type='BaseSegDataset',
    _scope_='mmseg',  # as in the base config: built in MMSegmentation's scope
    data_root=data_root,
    metainfo=dict(classes=classes),  # palette: random unless given here
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    dataset=dict(
        seg_dataset,
        _delete_=True,  # the demo's DemoADE20K arguments
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,  # images of different sizes are tested one by one
    dataset=dict(
        seg_dataset,
        _delete_=True,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
