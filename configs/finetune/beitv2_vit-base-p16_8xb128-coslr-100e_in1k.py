# BEiT v2 ViT-B/16 fine-tuning on ImageNet-1k (the official command in
# unilm/beit2/get_started_for_image_classification.md; lr as MMPretrain's
# configs/beitv2/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py):
# the v1 base recipe with the v2 lr (below), ImageNet mean/std; patch-token
# mean + fc_norm into a linear head.
#
# Layer decay and drop path depend on the pretraining length: the inherited
# values are the official ones after 300 epochs (for
# configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py); after
# 1600 epochs:
#   --cfg-options optim_wrapper.paramwise_cfg.layer_decay_rate=0.6 model.backbone.drop_path_rate=0.2
#
# The pretrained backbone: `pretrained` below (a placeholder: the
# `backbone.*` state dict our pretraining writes, or an official checkpoint
# converted with tools/convert_checkpoint.py).
#
#   bash tools/dist_train.sh configs/finetune/beitv2_vit-base-p16_8xb128-coslr-100e_in1k.py 8
_base_ = './beit_vit-base-p16_8xb128-coslr-100e_in1k.py'

pretrained = 'checkpoints/beitv2_vit-base-p16_in1k-pretrain.pth'  # placeholder
lr = 5e-4

model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
optim_wrapper = dict(optimizer=dict(lr=lr))
