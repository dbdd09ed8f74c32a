# BEiT v2 ViT-L/16, 300 epochs: the base recipe with the large backbone and
# the official large settings of the aggregation branch's layer and the
# layer scale (below). The tokenizer is the same ViT-B/16 VQ-KD.
_base_ = './beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'

embed_dims = 1024
num_layers = 24
early_layers = 21
layer_scale_init_value = 1e-5
model = dict(
    backbone=dict(
        arch='large',
        out_indices=(early_layers - 1, -1),
        layer_scale_init_value=layer_scale_init_value),
    neck=dict(
        embed_dims=embed_dims,
        num_heads=embed_dims // 64,
        feedforward_channels=embed_dims * 4,
        early_layers=early_layers,
        backbone_layers=num_layers,
        layer_scale_init_value=layer_scale_init_value),
    head=dict(in_channels=embed_dims))
