# BEiT v2 ViT-L/16, 1600 epochs: the large 300-epoch recipe with the
# 1600-epoch drop path and AdamW betas (below), as for base.
_base_ = './beitv2_vit-large-p16_8xb256-amp-coslr-300e_in1k.py'

drop_path_rate = 0.1
model = dict(
    backbone=dict(drop_path_rate=drop_path_rate),
    neck=dict(drop_path_rate=drop_path_rate))
optim_wrapper = dict(optimizer=dict(betas=(0.9, 0.999)))

max_epochs = 1600
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end={{_base_.warmup_epochs}}, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True,
         begin={{_base_.warmup_epochs}}, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
