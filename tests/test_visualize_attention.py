"""Explicit attention weights of the backbone, and
``tools/visualize_attention.py``."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from beit_plugin.compat import UnsafeCheckpointError
from beit_plugin.models.backbones import BEiT
from helpers import CONFIGS, load_tool, randomise

ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
IMG, PATCH = 32, 8
PAD = 2


def _count_sdpa(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', counting)
    return calls


@pytest.mark.parametrize('shared,per_block,abs_pos', [
    (True, False, False), (False, True, True), (True, True, False)],
    ids=['shared-bias', 'per-block-bias', 'both-biases'])
def test_explicit_attention_reproduces_the_fused_forward(
        monkeypatch, shared, per_block, abs_pos):
    backbone = randomise(BEiT(
        arch=dict(ARCH, num_layers=3), img_size=IMG, patch_size=PATCH,
        out_indices=(0, 1, 2), use_shared_rel_pos_bias=shared,
        use_rel_pos_bias=per_block, use_abs_pos_emb=abs_pos,
        layer_scale_init_value=0.1)).eval()
    x = torch.randn(2, 3, 24, 32)  # a 3 x 4 grid: tables resized on the fly
    calls = _count_sdpa(monkeypatch)
    with torch.no_grad():
        fused = backbone(x)
        assert len(calls) == 3  # every block fused
        outs, maps = backbone.forward_with_attention(x)
        assert len(calls) == 3  # ... and none of them here
        assert len(outs) == len(fused) == 3
        for mine, theirs in zip(outs, fused):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
        assert sorted(maps) == [0, 1, 2]
        for weights in maps.values():
            assert weights.shape == (2, 2, 13, 13)
            assert weights.dtype == torch.float32 and (weights >= 0).all()
            torch.testing.assert_close(weights.sum(-1),
                                       torch.ones(2, 2, 13))
            assert weights.std(-1).min() > 1e-3  # not uniform: a real test
        # only the chosen blocks leave the fused path
        chosen = backbone.attention_maps(x, layers=[0, -1])
        assert sorted(chosen) == [0, 2] and len(calls) == 4
        torch.testing.assert_close(chosen[2], maps[2])

        # the weights are the attention itself: with v computed here, they
        # give the fused attention's output of block 0
        tokens, grid = backbone.embed(x)
        shared_bias = backbone.rel_pos_bias(grid) if shared else None
        attn = backbone.blocks[0].attn
        normed = backbone.blocks[0].norm1(tokens)
        w_v = attn.qkv.weight[2 * ARCH['embed_dims']:]
        v = F.linear(normed, w_v, attn.v_bias).view(2, 13, 2, 16)
        mixed = torch.einsum('bhqk,bkhd->bqhd', maps[0], v).reshape(2, 13, 32)
        torch.testing.assert_close(attn.proj(mixed),
                                   attn(normed, grid, shared_bias),
                                   atol=1e-5, rtol=1e-5)


def test_layers_out_of_range_are_refused():
    backbone = BEiT(arch=ARCH, img_size=IMG, patch_size=PATCH)
    with pytest.raises(ValueError, match='layers entry 4 is out of range'):
        backbone.attention_maps(torch.zeros(1, 3, IMG, IMG), layers=[4])


# ---------------------------------------------------------------------------
# the tool
# ---------------------------------------------------------------------------

def _configs(tmp_path):
    """Tiny pretraining, fine-tuning and segmentation configs (the demo
    ones with a 4-block model), and a random pretraining checkpoint."""
    dims = ARCH['embed_dims']
    texts = dict(
        pretrain=f"""
_base_ = {str(CONFIGS / 'beit_pretrain.py')!r}
model = dict(
    backbone=dict(arch={ARCH!r}, img_size={IMG}, patch_size={PATCH},
                  out_indices=(1, 3)),
    neck=dict(embed_dims={dims}, num_heads=2, feedforward_channels=64,
              early_layers=2, backbone_layers=4),
    head=dict(in_channels={dims}, num_embed=16),
    target_generator=dict(
        encoder=dict(arch={ARCH!r}, img_size={IMG}, patch_size={PATCH}),
        num_embed=16))
""",
        finetune=f"""
_base_ = {str(CONFIGS / 'finetune' / 'beit_demo_finetune.py')!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{ARCH!r}), img_size={IMG},
                  init_cfg=None),
    head=dict(in_channels={dims}))
""",
        seg=f"""
_base_ = {str(CONFIGS / 'seg' / 'beit_demo_upernet.py')!r}
model = dict(
    backbone=dict(arch={ARCH!r}, out_indices=(0, 1, 2, 3), init_cfg=None),
    neck=dict(embed_dim={dims}),
    decode_head=dict(in_channels=[{dims}] * 4, channels=16),
    auxiliary_head=dict(in_channels={dims}, channels=8))
""")
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp_path / f'{name}.py'
        paths[name].write_text(text)
    tool = load_tool('visualize_attention')
    model = tool.build_model(Config.fromfile(paths['pretrain']))
    torch.manual_seed(3)
    randomise(model.backbone)
    checkpoint = tmp_path / 'pretrain.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return tool, paths, checkpoint, model.backbone.eval()


def _tiles(picture, count, side):
    """The ``count`` tiles of a tool picture, ``side`` px each."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    assert picture.shape == (rows * (side + PAD) + PAD,
                             cols * (side + PAD) + PAD, 3)
    return [picture[PAD + i // cols * (side + PAD):][:side,
                                                     PAD + i % cols *
                                                     (side + PAD):][:, :side]
            for i in range(count)]


def _cell_centres(tile, grid, cell):
    """``(h, w, 3)`` colours at the centres of the patches of a tile."""
    centres = np.arange(grid) * cell + cell // 2
    return tile[centres][:, centres].astype(int)


def _expected_overlay(tool, heat, colours):
    """Cell colours of ``heat`` ``(h, w)`` drawn over patches of the
    ``(h, w, 3)`` colours."""
    level = np.round(255 * heat / heat.max()).astype(np.uint8)
    jet = cv2.applyColorMap(level[..., None], cv2.COLORMAP_JET).astype(float)
    return np.round((1 - tool.ALPHA) * colours + tool.ALPHA * jet)


def _patchwork(path, grid):
    """Write a PNG of ``grid`` x ``grid`` random uniform patches; return
    their ``(grid, grid, 3)`` BGR colours."""
    colours = np.random.default_rng(0).integers(0, 256, (grid, grid, 3),
                                                dtype=np.uint8)
    cv2.imwrite(str(path), np.kron(colours, np.ones((PATCH, PATCH, 1),
                                                    np.uint8)))
    return colours


def test_attention_pngs_of_a_pretraining_checkpoint_in_every_job(tmp_path):
    tool, configs, checkpoint, backbone = _configs(tmp_path)
    image = tmp_path / 'img.png'
    patches = _patchwork(image, IMG // PATCH)
    # the same patch twice (column 1, row 2; pixel x 12, y 20), then another
    points = ['1,2', '12,20px', '3,0']
    pictures = {}
    for job, config in configs.items():
        out_dir = tmp_path / job
        written = tool.main([str(config), str(checkpoint), str(image),
                             '--layers', '1', '-1', '--points', *points,
                             '--out-dir', str(out_dir)])
        names = [f'img_block{n}_{kind}.png' for n in (1, 4)
                 for kind in ('points', 'cls')]
        assert sorted(p.name for p in written) == sorted(names)
        pictures[job] = {name: cv2.imread(str(out_dir / name))
                         for name in names}

    # pretraining: no test pipeline, the backbone's 32 px input; 7 x 32 =
    # 224 px tiles; points: the input and 3 maps, CLS: the input and 2 heads
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    rgb = torch.from_numpy(cv2.imread(str(image))[..., ::-1].copy())
    x = ((rgb.permute(2, 0, 1).float() - mean) / std)[None]
    with torch.no_grad():
        maps = backbone.attention_maps(x, layers=[0, 3])
    grid, cell = IMG // PATCH, 7 * PATCH
    for block in (0, 3):
        weights = maps[block][0].numpy()
        name = f'img_block{block + 1}'
        tiles = _tiles(pictures['pretrain'][f'{name}_points.png'], 4,
                       7 * IMG)
        assert np.array_equal(tiles[1], tiles[2])  # grid and pixel point
        for tile, (col, row) in zip(tiles[1:], [(1, 2), (1, 2), (3, 0)]):
            heat = weights[:, 1 + row * grid + col, 1:].mean(0)
            expected = _expected_overlay(tool, heat.reshape(grid, grid),
                                         patches)
            colours = _cell_centres(tile, grid, cell)
            assert len(np.unique(colours.reshape(-1, 3), axis=0)) > 1
            np.testing.assert_allclose(colours, expected, atol=3)
        # the reference patch is outlined in white
        assert (tiles[3][0:cell, 3 * cell] == 255).all()
        tiles = _tiles(pictures['pretrain'][f'{name}_cls.png'], 3, 7 * IMG)
        for head, tile in enumerate(tiles[1:]):
            expected = _expected_overlay(
                tool, weights[head, 0, 1:].reshape(grid, grid), patches)
            colours = _cell_centres(tile, grid, cell)
            assert len(np.unique(colours.reshape(-1, 3), axis=0)) > 1
            np.testing.assert_allclose(colours, expected, atol=3)
        assert not np.array_equal(tiles[1], tiles[2])  # one map per head

    # fine-tuning: the same backbone (the shared table copied into each
    # block), its test pipeline keeps the 32 px image: the same pictures
    for name, picture in pictures['pretrain'].items():
        diff = np.abs(picture.astype(int) - pictures['finetune'][name])
        assert diff.max() <= 3, name
    # segmentation: its test pipeline resizes to 96 px (12 x 12 patches),
    # 3 x 96 = 288 px tiles
    for block in (1, 4):
        for kind, count in (('points', 4), ('cls', 3)):
            tiles = _tiles(pictures['seg'][f'img_block{block}_{kind}.png'],
                           count, 288)
            for tile in tiles[1:]:
                colours = _cell_centres(tile, 12, 24)
                assert len(np.unique(colours.reshape(-1, 3), axis=0)) > 1


class _Payload:
    """Anything but data: loading it would run code."""


def test_checkpoints_without_the_backbone_or_with_code_are_refused(
        tmp_path):
    tool, configs, checkpoint, _ = _configs(tmp_path)
    image = tmp_path / 'img.png'
    _patchwork(image, IMG // PATCH)
    args = [str(image), '--out-dir', str(tmp_path / 'out')]
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'head.fc.weight': torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match='has no weights for'):
        tool.main([str(configs['finetune']), str(other), *args])
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': {}, 'payload': _Payload()}, unsafe)
    with pytest.raises(UnsafeCheckpointError):
        tool.main([str(configs['finetune']), str(unsafe), *args])
    with pytest.raises(ValueError, match='outside the 4 x 4 patch grid'):
        tool.main([str(configs['pretrain']), str(checkpoint), *args,
                   '--points', '32,0px'])
    with pytest.raises(ValueError, match='blocks 1 .. 4'):
        tool.main([str(configs['pretrain']), str(checkpoint), *args,
                   '--layers', '5'])
