"""Our backbone exported as a transformers BeitModel directory loads with
``BeitModel.from_pretrained`` and gives our outputs; tools/export_hf.py
writes it without transformers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BeitModel

from beit_plugin.convert import export_hf, hf_config, with_prefix
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.necks import BEiTV2PatchAggregation
from helpers import ROOT, TINY_ARCH, randomise

IMG, PATCH = 32, 8
DIMS = TINY_ARCH['embed_dims']


def ours(**kwargs) -> BEiT:
    return randomise(BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                          **kwargs)).eval()


def from_pretrained(path: Path) -> BeitModel:
    """Load the exported directory, failing on any key it misses or has
    too many of (transformers only warns)."""
    model, info = BeitModel.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


@pytest.mark.parametrize('kwargs', [
    dict(use_shared_rel_pos_bias=True, use_mask_token=True,
         use_abs_pos_emb=True),
    dict(use_rel_pos_bias=True, use_shared_rel_pos_bias=True, qkv_bias=False,
         layer_scale_init_value=0.),
], ids=['pretraining-layout', 'no-qv-bias-no-layer-scale'])
def test_round_trip_gives_the_same_hidden_states(kwargs, tmp_path):
    model = ours(**kwargs)
    peer = from_pretrained(export_hf(model, tmp_path / 'hf'))
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        out = peer(x)
        expected = model(x)[0]
        torch.testing.assert_close(out.last_hidden_state, expected,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(out.pooler_output, expected[:, 0],
                                   atol=1e-5, rtol=0)


def test_round_trip_of_a_mean_pooling_backbone(tmp_path):
    model = ours(use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                 final_norm=False, out_type='avg_featmap')
    peer = from_pretrained(export_hf(model, tmp_path / 'hf'))
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(peer(x).pooler_output, model(x)[0],
                                   atol=1e-5, rtol=0)


def test_config_matches_the_backbone():
    model = BEiT(arch=TINY_ARCH, img_size=48, patch_size=PATCH,
                 use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                 final_norm=False, out_type='avg_featmap', norm_eps=1e-5)
    config = hf_config(model)
    assert {k: config[k] for k in (
        'hidden_size', 'num_hidden_layers', 'num_attention_heads',
        'intermediate_size', 'image_size', 'patch_size', 'layer_norm_eps',
        'use_absolute_position_embeddings', 'use_relative_position_bias',
        'use_shared_relative_position_bias', 'layer_scale_init_value',
        'use_mean_pooling', 'use_mask_token')} == dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, image_size=48, patch_size=8,
            layer_norm_eps=1e-5, use_absolute_position_embeddings=False,
            use_relative_position_bias=True,
            use_shared_relative_position_bias=False,
            layer_scale_init_value=0.1, use_mean_pooling=True,
            use_mask_token=False)


@pytest.mark.parametrize('kwargs,message', [
    (dict(out_type='avg_featmap'), 'this backbone has both'),
    (dict(final_norm=False), 'this backbone has neither'),
    # transformers reshapes position tables as squares: other outputs
    (dict(img_size=(32, 48)), r'square patch grids only; this backbone is '
     r'built for \(4, 6\)'),
])
def test_what_transformers_cannot_hold_is_refused(kwargs, message):
    model = BEiT(**{**dict(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH),
                    **kwargs})
    with pytest.raises(ValueError, match=f'{message}$'):
        hf_config(model)


@pytest.mark.slow
def test_tool_exports_a_v2_pretraining_checkpoint_without_transformers(
        tmp_path):
    backbone = ours(use_shared_rel_pos_bias=True, use_mask_token=True,
                    final_norm=False, out_indices=(0, -1))
    neck = randomise(BEiTV2PatchAggregation(
        DIMS, TINY_ARCH['num_heads'], TINY_ARCH['feedforward_channels'],
        early_layers=1, backbone_layers=TINY_ARCH['num_layers']))
    torch.save({'state_dict': {
        **with_prefix(backbone.state_dict(), 'backbone.'),
        **with_prefix(neck.state_dict(), 'neck.')}}, tmp_path / 'v2.pth')
    # transformers made unimportable in the exporting process
    script = ('import runpy, sys; sys.modules["transformers"] = None; '
              'sys.argv = sys.argv[1:]; '
              'runpy.run_path(sys.argv[0], run_name="__main__")')
    done = subprocess.run(
        [sys.executable, '-c', script, str(ROOT / 'tools' / 'export_hf.py'),
         str(tmp_path / 'v2.pth'), str(tmp_path / 'hf')],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f'{tmp_path / "hf"}: transformers BeitModel, 2 layers of 32 channels, '
        f'2 heads, 32 px / 8, from {tmp_path / "v2.pth"}']
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    assert config['use_mask_token'] and not config['use_mean_pooling']

    peer = from_pretrained(tmp_path / 'hf')
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():  # the official v2 backbone: blocks, then the norm
        expected = neck.norm(backbone(x)[-1])
        torch.testing.assert_close(peer(x).last_hidden_state, expected,
                                   atol=1e-5, rtol=0)
