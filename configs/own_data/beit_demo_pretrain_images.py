# BEiT v2-style pretraining of the demo's small BEiT (configs/beit_pretrain.py,
# with the demo VQ-KD tokenizer) on a folder of your own images: no labels,
# no annotation file, any image size, any format among
# .jpg .jpeg .png .ppm .bmp .pgm .tif. The folder is scanned recursively, so a
# flat folder and one with class subfolders (e.g. an ImageFolder's train/)
# both work; an empty or missing folder is refused, naming it.
#
#   python tools/train.py configs/own_data/beit_demo_pretrain_images.py \
#       --cfg-options train_dataloader.dataset.data_root=/my/images
#
# Only the data set changes; the pipeline is the demo's (each image randomly
# cropped and resized to the demo's two views; its loader names a file it
# cannot read). The demo tokenizer (checkpoints/vqkd_demo_hog.pth) only knows
# 64 px synthetic shapes: for real photos use the full recipe,
# configs/own_data/beitv2_vit-base-p16_8xb256-amp-coslr-300e_images.py, with
# a real tokenizer (README, "Your own data").
_base_ = '../beit_pretrain.py'

data_root = 'data/my_images'  # see --cfg-options above

train_dataloader = dict(
    dataset=dict(
        _delete_=True,  # the demo's DemoImageNet arguments
        type='CustomDataset',
        data_root=data_root,
        with_label=False,
        pipeline={{_base_.train_pipeline}}))
