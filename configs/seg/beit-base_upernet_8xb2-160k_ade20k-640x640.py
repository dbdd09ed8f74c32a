# BEiT v1 base (self-supervised on ImageNet-22k, then intermediate fine-tuned
# on ImageNet-22k) + UperNet, ADE20K 640x640, 160k iterations, an effective
# batch of 16 (8 GPUs x 2).
#
# Source: microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/
# upernet_beit_base_12_640_slide_160k_ade20k_pt2ft.py, equal to MMSegmentation's
# configs/beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py: its lr, layer
# decay, drop path, layer scale and slide test (below); AdamW, warmup, poly
# and fp16 from configs/seg/_base_.
_base_ = [
    './_base_/upernet_beit-base.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
]
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=crop_size,
        drop_path_rate=0.1,
        layer_scale_init_value=0.1,
        # Placeholder: beit_base_patch16_224_pt22k_ft22k (official release or
        # timm `beit_base_patch16_224.in22k_ft_in22k`), converted to our names
        # with beit_plugin.convert.convert_state_dict(..., source='timm') and
        # saved with the keys prefixed by 'backbone.'.
        init_cfg=dict(
            checkpoint='checkpoints/beit_base_patch16_224_pt22k_ft22k.pth')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
optim_wrapper = dict(
    optimizer=dict(lr=3e-5), paramwise_cfg=dict(layer_decay_rate=0.9))

# By default, models are trained on 8 GPUs with 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
