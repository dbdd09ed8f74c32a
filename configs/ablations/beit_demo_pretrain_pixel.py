# BEiT ablation "visual tokens vs pixel regression", demo size: the embedded
# default (configs/beit_pretrain.py: blockwise masking, v2 patch aggregation)
# with the tokenizer replaced by the masked patches' own pixels, standardised
# per patch (MAE's normalised-pixel target), and the token classifier by a
# linear regression head trained with the mean squared error. Evaluate it by
# fine-tuning:
#
#   python tools/train.py configs/ablations/beit_demo_pretrain_pixel.py
#   python tools/train.py configs/finetune/beit_demo_finetune.py --work-dir work_dirs/beit_demo_finetune_pixel --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/beit_demo_pretrain_pixel/iter_800.pth
_base_ = '../beit_pretrain.py'

patch_size = 8  # as the base's
model = dict(
    head=dict(_delete_=True, type='beit_plugin.PixelRegressionHead',
              in_channels=192,
              out_channels=patch_size * patch_size * 3),
    target_generator=dict(_delete_=True, type='beit_plugin.PatchPixels',
                          patch_size=patch_size))
