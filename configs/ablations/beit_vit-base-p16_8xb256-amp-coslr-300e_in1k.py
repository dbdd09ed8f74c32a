# BEiT ablations, full size (the BEiT paper's Table 4 setting): ViT-B/16
# pretrained on ImageNet-1k for a shorter run than the 800-epoch recipe
# (below), then fine-tuned on ImageNet-1k
# (configs/finetune/beit_vit-base-p16_8xb128-coslr-100e_in1k.py) and ADE20K
# (configs/seg/beit-base_upernet_8xb2-160k_ade20k-512x512.py). This file is
# the reference row (blockwise masking, DALL-E visual tokens); the ablation
# rows are beside it:
#
#   ..._random-mask_...: random instead of blockwise masking
#   ..._pixel_...: per-patch normalised pixel regression instead of tokens
#   no pretraining: the fine-tuning recipe with
#       --cfg-options model.backbone.init_cfg=None
#
#   bash tools/dist_train.sh configs/ablations/beit_vit-base-p16_8xb256-amp-coslr-300e_in1k.py 8
_base_ = '../beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py'

max_epochs = 300
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
