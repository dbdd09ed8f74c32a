# UperNet with our BEiT-base backbone on ADE20K: the shared part of the
# segmentation recipes of configs/seg/ (model, optimizer, 160k schedule).
#
# Recipe: the official BEiT / BEiT v2 semantic segmentation code
# (microsoft/unilm, beit/semantic_segmentation and beit2/semantic_segmentation,
# configs/beit/upernet/*.py) as ported by MMSegmentation
# (mmseg configs/beit/*.py, _base_/models/upernet_beit.py). The leaves set the
# data (crop size), learning rate, layer decay and drop path of each paper
# setting.
#
# SyncBN (decode heads, 4x branch of the feature pyramid): the full recipes
# train on 8 GPUs. Without distribution MMEngine's Runner reverts it to BN;
# under a distributed launch without CUDA our tools make it BN
# (beit_plugin.distributed.configure_cpu_distributed).
_base_ = [
    'mmseg::_base_/models/upernet_beit.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
# (no `crop_size` variable here: the dataset bases of the leaves define it)
# test_cfg.size_divisor: at test time images are padded (and predictions
# cropped back) to a multiple of the patch size, which our backbone needs
# (a slide window is smaller than the crop on a side shorter than the crop).
data_preprocessor = dict(size=(512, 512), test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='beit_plugin.BEiT',
        arch='base',
        img_size=(512, 512),
        patch_size=16,
        out_indices=(3, 5, 7, 11),
        drop_path_rate=0.1,
        # the official segmentation backbone has no final LayerNorm on the
        # features it hands to the neck
        final_norm=False,
        out_type='featmap',
        use_abs_pos_emb=False,
        # one relative position bias table per block, initialised from the
        # pretraining's shared table (expanded and resized on loading)
        use_rel_pos_bias=True,
        use_shared_rel_pos_bias=False,
        layer_scale_init_value=0.1,
        # Placeholder: a leaf sets the checkpoint of its pretraining. Keys
        # must be `backbone.*` in our names (what tools/train.py writes for
        # configs/beit*/ pretraining). A timm / official checkpoint: convert
        # it with beit_plugin.convert.convert_state_dict(sd, source='timm')
        # and save it with the keys prefixed by 'backbone.'.
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/beit-base_pretrained.pth',
            prefix='backbone.')),
    # the official 4-scale pyramid: 4x deconv-BN-GELU-deconv, 2x deconv,
    # identity, 0.5x max pool (Feature2Pyramid defaults to SyncBN: explicit)
    neck=dict(
        type='Feature2Pyramid',
        embed_dim=768,
        rescales=[4, 2, 1, 0.5],
        norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[768, 768, 768, 768],
        channels=768,
        num_classes=150,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=768, num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

# AdamW with layer-wise lr decay (official: LayerDecayOptimizerConstructor);
# the leaves set lr and layer_decay_rate. The official runs use fp16 AMP
# (tools/train.py turns this into bfloat16 autocast on a CPU).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(
        type='AdamW', lr=7e-4, betas=(0.9, 0.999), weight_decay=0.05,
        fused=True),
    constructor='beit_plugin.LayerDecayOptimWrapperConstructor',
    # the official segmentation recipe's weight decay (unilm beit/ and beit2/
    # semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py,
    # LayerDecayOptimizerConstructor.add_params): its exemption
    # `name in ('pos_embed', 'cls_token')` sees the segmentor's full names
    # ('backbone.cls_token') and never matches, so only 1-d parameters and
    # biases go without decay; cls_token and the relative position tables are
    # decayed
    paramwise_cfg=dict(layer_decay_rate=0.65, no_decay_names=()))

# the official schedule: a linear warmup, then poly decay to 0
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=1500,
        end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000,
                 val_interval=16000)
# the base's checkpoints, written atomically; stop at a NaN / infinite loss
default_hooks = dict(checkpoint=dict(type='beit_plugin.AtomicCheckpointHook'))
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
# a fixed seed: MMEngine seeds the data sampler and the loader workers
# before it reads a checkpoint, so --resume is exact only with the seed the
# run started with (randomness.seed=None draws a new one)
randomness = dict(seed=0)
