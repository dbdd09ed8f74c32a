# Linear probing of a pretrained BEiT v2 ViT-L/16 on ImageNet-1k: as the
# base recipe (frozen backbone, last-layer CLS token, BatchNorm without
# affine, linear head, the base's schedule) with the large backbone, all
# its blocks frozen.
#
#   bash tools/dist_train.sh configs/linear_probe/beitv2_vit-large-p16_8xb128-linear-coslr-100e_in1k.py 8
_base_ = './beitv2_vit-base-p16_8xb128-linear-coslr-100e_in1k.py'

pretrained = 'checkpoints/beitv2_vit-large-p16_in1k-pretrain.pth'  # placeholder
embed_dims = 1024

model = dict(
    backbone=dict(
        arch='large',
        frozen_stages=24,
        layer_scale_init_value=1e-5,
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=embed_dims),
    head=dict(in_channels=embed_dims))
