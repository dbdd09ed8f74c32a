# BEiT v2-style pretraining of the demo's small BEiT (configs/beit_pretrain.py:
# 64 px images, 8 px patches, the demo VQ-KD tokenizer) on a folder of your own
# images: no labels, no annotation file, any image size, any format among
# .jpg .jpeg .png .ppm .bmp .pgm .tif. The folder is scanned recursively, so a
# flat folder and one with class subfolders (e.g. an ImageFolder's train/)
# both work; an empty or missing folder is refused, naming it.
#
#   python tools/train.py configs/own_data/beit_demo_pretrain_images.py \
#       --cfg-options train_dataloader.dataset.data_root=/my/images
#
# Only the data set changes; the pipeline is the demo's (each image randomly
# cropped and resized to two 64 px views) with a loader that names a file it
# cannot read. The demo tokenizer (checkpoints/vqkd_demo_hog.pth) only knows
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
        # configs/beit_pretrain.py's train_pipeline but for the loader
        pipeline=[
            dict(type='beit_plugin.CheckedLoadImageFromFile'),
            dict(type='ColorJitter', brightness=0.4, contrast=0.4,
                 saturation=0.4, hue=0.),
            dict(type='RandomFlip', prob=0.5, direction='horizontal'),
            dict(type='RandomResizedCropAndInterpolationWithTwoPic',
                 size=64, second_size=64, interpolation='bicubic',
                 second_interpolation='bicubic', scale=(0.2, 1.0)),
            dict(type='beit_plugin.BlockwiseMaskGenerator', input_size=8,
                 num_masking_patches=26, min_num_patches=4,
                 fixed_count=True),
            dict(type='PackInputs'),
        ]))
