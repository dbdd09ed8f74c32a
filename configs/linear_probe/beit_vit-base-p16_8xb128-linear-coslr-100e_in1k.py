# Linear probing of a pretrained BEiT (v1) ViT-B/16 on ImageNet-1k.
#
# The backbone is frozen entirely (frozen_stages = num_layers: embeddings,
# relative position tables and all blocks; nothing in it trains and its
# dropout/drop path are off). The features are the plain mean of the patch
# tokens of one block (out_indices), taken as `featmap` and pooled by the
# FeatureBatchNorm neck, which standardises them with a BatchNorm without
# affine parameters (as the BEiT v2 paper and MAE); a linear head classifies
# them. Why not out_type='avg_featmap': it adds `fc_norm`, a LayerNorm of the
# fine-tuning head that no pretraining checkpoint holds; frozen at its initial
# values it would only add a per-sample normalisation.
#
# Schedule: the official BEiT linear evaluation (unilm/beit/run_linear_eval.py
# and get_started_for_image_classification.md): an effective batch of 1024
# (8 GPUs x 128), AdamW, cosine to 0 without warmup, RandomResizedCrop +
# flip for training (the MMPretrain base's pipeline), resize + center crop
# for testing, cross-entropy, the official head initialisation.
# The official script trains one probe per block on [CLS; mean of patches]
# and reports the best block; here one block is probed -- pick it with
#   --cfg-options "model.backbone.out_indices=(k-1,)"
#
# The pretrained backbone: `pretrained` below (a placeholder; a `backbone.*`
# state dict in our names).
#
#   bash tools/dist_train.sh configs/linear_probe/beit_vit-base-p16_8xb128-linear-coslr-100e_in1k.py 8
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32_pil_resize.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

pretrained = 'checkpoints/beit_vit-base-p16_in1k-pretrain.pth'  # placeholder
embed_dims = 768
num_layers = 12
num_classes = 1000
max_epochs = 100

data_preprocessor = dict(num_classes=num_classes)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch='base',
        img_size=224,
        patch_size=16,
        out_indices=(8, ),  # block 9
        out_type='featmap',  # patch tokens; the neck averages them
        frozen_stages=num_layers,  # the whole backbone
        final_norm=False,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
        use_shared_rel_pos_bias=False,
        layer_scale_init_value=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained,
                      prefix='backbone.')),
    neck=dict(type='beit_plugin.FeatureBatchNorm', in_channels=embed_dims),
    head=dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=embed_dims,
        loss=dict(type='CrossEntropyLoss'),
        init_cfg=[dict(type='Normal', layer='Linear', std=0.01, bias=0.)]))

test_pipeline = [
    # MMPretrain's own, which its inferencers replace for in-memory images
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Only the head has trainable parameters (the BatchNorm has none).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=1e-4, fused=True))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=0., by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
default_hooks = dict(
    # complete checkpoints or none; old ones deleted once the new one is in
    checkpoint=dict(type='beit_plugin.AtomicCheckpointHook', interval=1,
                    max_keep_ckpts=2, save_best='auto'))
# stop at a NaN / infinite loss or gradient norm; never save such weights
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
randomness = dict(seed=0)
