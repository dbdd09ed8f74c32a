# BEiT v2 ViT-B/16 fine-tuning on ImageNet-1k (the official command in
# unilm/beit2/get_started_for_image_classification.md; lr as MMPretrain's
# configs/beitv2/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py):
# batch 1024 (8 x 128), AdamW lr 5e-4, weight decay 0.05, 20 warmup epochs
# then cosine over 100 epochs, mixup 0.8, cutmix 1.0, label smoothing 0.1,
# ImageNet mean/std; patch-token mean + fc_norm into a linear head.
#
# Layer decay and drop path depend on the pretraining length: 0.65 and 0.1
# after 300 epochs (these values, for
# configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py), 0.6 and
# 0.2 after 1600 epochs:
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
