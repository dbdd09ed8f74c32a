# The BEiT v2 ViT-B/16 300-epoch recipe
# (configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py) on a
# folder of your own images instead of ImageNet: no labels, no annotation
# file, any image size, scanned recursively (flat or in subfolders).
#
#   bash tools/dist_train.sh configs/own_data/beitv2_vit-base-p16_8xb256-amp-coslr-300e_images.py 8 \
#       --cfg-options train_dataloader.dataset.data_root=/my/images
#
# The tokenizer: the official VQ-KD (CLIP teacher, 224 px, 16 px patches)
# converted once with
#
#   python tools/convert_checkpoint.py vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth checkpoints/vqkd_clip.pth --from unilm --model vqkd
#
# or one trained on your images with configs/vqkd/ (then
# tools/export_tokenizer.py --encoder-only); another file is
# --cfg-options model.target_generator.init_cfg.checkpoint=FILE. A tokenizer
# made for another grid than the backbone's 14 x 14 patches is refused.
#
# The recipe's schedule counts epochs of your folder, at a total batch of
# 2048 (8 GPUs x 256); with fewer GPUs add --auto-scale-lr or set
# train_dataloader.batch_size.
_base_ = '../beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'

data_root = 'data/my_images'  # see --cfg-options above
tokenizer_checkpoint = 'checkpoints/vqkd_clip.pth'

model = dict(
    target_generator=dict(init_cfg=dict(checkpoint=tokenizer_checkpoint)))

train_dataloader = dict(
    dataset=dict(
        _delete_=True,  # the recipe's ImageNet arguments
        type='CustomDataset',
        data_root=data_root,
        with_label=False,
        pipeline={{_base_.train_pipeline}}))
