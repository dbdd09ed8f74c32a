# BEiT v2 ViT-L/16 fine-tuning on ImageNet-1k (the official command in
# unilm/beit2/get_started_for_image_classification.md): the v1 large recipe
# with the v2 lr and layer-wise lr decay (below); the lr is the official one
# after 300 pretraining epochs. After 1600 pretraining epochs:
#   --cfg-options optim_wrapper.optimizer.lr=2e-4
#
# The official run used 8 GPUs x 64 images x 2 accumulation steps; with less
# memory set train_dataloader.batch_size=64 and
# optim_wrapper.accumulative_counts=2.
#
#   bash tools/dist_train.sh configs/finetune/beitv2_vit-large-p16_8xb128-coslr-50e_in1k.py 8
_base_ = './beit_vit-large-p16_8xb128-coslr-50e_in1k.py'

pretrained = 'checkpoints/beitv2_vit-large-p16_in1k-pretrain.pth'  # placeholder
lr = 5e-4
layer_decay_rate = 0.8

model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
optim_wrapper = dict(
    optimizer=dict(lr=lr),
    paramwise_cfg=dict(layer_decay_rate=layer_decay_rate))
