# BEiT (v1) ViT-L/16 fine-tuning on ImageNet-1k (the official "BEiT-large"
# command for models pretrained without intermediate fine-tuning, in
# unilm/beit/get_started_for_image_classification.md): the official large
# lr, layer-wise lr decay, drop path and schedule (below); the rest as the
# base recipe.
#
# The official run used 8 GPUs x 64 images x 2 accumulation steps; with less
# memory set train_dataloader.batch_size=64 and
# optim_wrapper.accumulative_counts=2.
#
#   bash tools/dist_train.sh configs/finetune/beit_vit-large-p16_8xb128-coslr-50e_in1k.py 8
_base_ = './beit_vit-base-p16_8xb128-coslr-100e_in1k.py'

pretrained = 'checkpoints/beit_vit-large-p16_in1k-pretrain.pth'  # placeholder
embed_dims = 1024
drop_path_rate = 0.2
layer_scale_init_value = 1e-5  # replaced by the checkpoint's values
layer_decay_rate = 0.75
lr = 1e-3
max_epochs = 50
warmup_epochs = 5

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=drop_path_rate,
        layer_scale_init_value=layer_scale_init_value,
        init_cfg=dict(checkpoint=pretrained)),
    head=dict(in_channels=embed_dims))
optim_wrapper = dict(
    optimizer=dict(lr=lr),
    paramwise_cfg=dict(layer_decay_rate=layer_decay_rate))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
