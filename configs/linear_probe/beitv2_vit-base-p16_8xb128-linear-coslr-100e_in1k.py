# Linear probing of a pretrained BEiT v2 ViT-B/16 on ImageNet-1k: the frozen
# backbone's last-layer CLS token, standardised by a BatchNorm without affine
# parameters, into a linear head (the BEiT v2 recipe probes the CLS token:
# its patch aggregation pretrains the CLS token as the image representation).
# The schedule is the base recipe's (the official BEiT linear evaluation);
# the official BEiT v2 code ships no linear-probing script.
#
# To probe the mean patch token of block k instead:
#   --cfg-options model.backbone.out_type=featmap "model.backbone.out_indices=(k-1,)"
#
#   bash tools/dist_train.sh configs/linear_probe/beitv2_vit-base-p16_8xb128-linear-coslr-100e_in1k.py 8
_base_ = './beit_vit-base-p16_8xb128-linear-coslr-100e_in1k.py'

pretrained = 'checkpoints/beitv2_vit-base-p16_in1k-pretrain.pth'  # placeholder

model = dict(
    backbone=dict(
        out_indices=(-1, ),
        out_type='cls_token',
        init_cfg=dict(checkpoint=pretrained)))
