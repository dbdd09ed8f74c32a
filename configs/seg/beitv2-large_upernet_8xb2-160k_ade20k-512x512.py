# BEiT v2 large + UperNet, ADE20K 512x512, 160k iterations, an effective
# batch of 16 (8 GPUs x 2).
#
# Source: microsoft/unilm beit2/semantic_segmentation/configs/beit/upernet/
# upernet_beit_large_24_512_slide_160k_ade20k.py (BEiT v2 paper, ADE20K
# results): its lr, layer decay, drop path, layer scale and slide test
# (below); AdamW, warmup, poly and fp16 from configs/seg/_base_.
_base_ = [
    './_base_/upernet_beit-base.py',
    'mmseg::_base_/datasets/ade20k.py',
]
crop_size = (512, 512)
model = dict(
    backbone=dict(
        arch='large',
        img_size=crop_size,
        out_indices=(7, 11, 15, 23),
        drop_path_rate=0.2,
        layer_scale_init_value=1e-6,
        # the checkpoint of our BEiT v2 pretraining recipe (backbone.* keys)
        init_cfg=dict(
            checkpoint='work_dirs/beitv2_vit-large-p16_8xb256-amp-coslr-1600e'
            '_in1k/epoch_1600.pth')),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(
    optimizer=dict(lr=4e-5), paramwise_cfg=dict(layer_decay_rate=0.9))

# By default, models are trained on 8 GPUs with 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
