# BEiT v1 pretraining of ViT-B/16 on ImageNet-1k, the paper's recipe: the
# DALL-E tokenizer reads a half-size second view, blockwise masking, one
# relative position bias shared by all blocks, mixed precision; an effective
# batch of 2048 (8 GPUs x 256).
#
# Data, pipeline and optimizer come from MMPretrain's BEiT config
# (data/imagenet with meta/train.txt, the DALL-E input map as the second
# normalisation; AdamW lr 1.5e-3, weight decay 0.05, gradient clipping 3.0,
# as the paper); the model, the masking, the parameter groups and the
# schedule are set here.
#
# The tokenizer: OpenAI's DALL-E encoder as a plain state dict in
# checkpoints/dalle_encoder.pth (MMPretrain's dalle_encoder.pth has the same
# layout; see DALLEEncoder's docstring to convert OpenAI's encoder.pkl).
#
#   bash tools/dist_train.sh configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py 8
_base_ = 'mmpretrain::beit/beit_beit-base-p16_8xb256-amp-coslr-300e_in1k.py'
custom_imports = dict(imports=['beit_plugin'], allow_failed_imports=False)
default_scope = 'beit_plugin'

tokenizer_checkpoint = 'checkpoints/dalle_encoder.pth'
img_size = 224
patch_size = 16
drop_path_rate = 0.1
layer_scale_init_value = 0.1

model = dict(
    _delete_=True,
    type='beit_plugin.BEiTPretrainer',
    backbone=dict(
        type='beit_plugin.BEiT',
        arch='base',
        img_size=img_size,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        use_mask_token=True,
        # the official pretraining init (modeling_pretrain.py, _init_weights):
        # std 0.02 truncated at +-0.02, the patch-embedding conv included
        init_mode='modeling_pretrain',
        layer_scale_init_value=layer_scale_init_value,
        final_norm=True,
        out_type='raw'),
    head=dict(type='beit_plugin.BEiTMIMHead', in_channels=768, num_embed=8192),
    target_generator=dict(
        type='beit_plugin.DALLEEncoder',
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=tokenizer_checkpoint)))

train_pipeline = [
    dict(type='beit_plugin.CheckedLoadImageFromFile'),
    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4,
         hue=0.),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=img_size,
         second_size=img_size // 2, interpolation='bicubic',
         second_interpolation='lanczos', scale=(0.08, 1.0)),
    # the official generator: blocks of at least min_num_patches until
    # num_masking_patches of the grid are masked
    # (scoped: the dataset inherited from MMPretrain builds its pipeline in
    # the mmpretrain scope)
    dict(type='beit_plugin.BlockwiseMaskGenerator',
         input_size=img_size // patch_size, num_masking_patches=75,
         min_num_patches=16, max_num_patches=None),
    dict(type='PackInputs'),
]
# the base's collate_fn carries _scope_='mmpretrain', which MMEngine's
# Runner.build_dataloader would pass to default_collate; ours drops it
train_dataloader = dict(
    collate_fn=dict(type='beit_plugin.default_collate'),
    dataset=dict(pipeline=train_pipeline))

# No weight decay where the official code has none (run_beit*_pretraining.py:
# create_optimizer of optim_factory.py, skip list = the pretraining model's
# no_weight_decay()): 1-d parameters (norms, biases, q/v biases, layer
# scales) and pos_embed / cls_token. The mask token and the shared relative
# position table are decayed, as there.
optim_wrapper = dict(
    # one log line for the frozen tokenizer instead of a warning per tensor
    constructor='beit_plugin.FrozenParamsOptimWrapperConstructor',
    # torch's fused AdamW (CPU, CUDA): one kernel per step, not one per tensor
    optimizer=dict(fused=True),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'q_bias': dict(decay_mult=0.),
            'v_bias': dict(decay_mult=0.),
            'gamma_': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
        }))

max_epochs = 800
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# the base's checkpoints, written atomically; stop at a NaN / infinite loss
default_hooks = dict(checkpoint=dict(type='beit_plugin.AtomicCheckpointHook'))
custom_hooks = [dict(type='beit_plugin.NonFiniteCheckHook'),
                # random generator states in checkpoints: --resume is exact
                dict(type='beit_plugin.RNGStateHook')]
# the tokenizer has no gradients; every trained parameter is used
find_unused_parameters = False
