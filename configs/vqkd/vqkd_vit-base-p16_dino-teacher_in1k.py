# VQ-KD tokenizer of BEiT v2 on ImageNet-1k with the DINO ViT-B/16 teacher:
# the CLIP recipe with DINO's normalised patch tokens as targets.
#
# Teacher weights are read from a local file, never downloaded:
# `checkpoints/dino_vitbase16_pretrain.pth`, the official DINO release
# (timm / DINO key names). It loads into our `BEiT` backbone configured as a
# plain ViT (absolute positions, no relative bias, no layer scale);
# `split_qkv_bias=True` turns its `qkv.bias` into our q/v biases (the k bias
# cancels in the softmax).
_base_ = ['./vqkd_vit-base-p16_clip-teacher_in1k.py']

dino_checkpoint = 'checkpoints/dino_vitbase16_pretrain.pth'

model = dict(
    teacher=dict(
        _delete_=True,
        type='BackboneTeacher',
        backbone=dict(
            type='beit_plugin.BEiT',
            arch='base',
            img_size=224,
            patch_size=16,
            use_abs_pos_emb=True,
            use_rel_pos_bias=False,
            use_shared_rel_pos_bias=False,
            layer_scale_init_value=0.,
            final_norm=True,
            out_type='raw'),
        out_channels=768,
        checkpoint=dino_checkpoint,
        split_qkv_bias=True,
        input_size=224))
