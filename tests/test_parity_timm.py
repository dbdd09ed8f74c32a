"""Our backbone equals timm's Beit once timm's weights are converted."""
import pytest
import torch
from timm.models.beit import Beit

from beit_plugin.convert import convert_state_dict
from beit_plugin.models.backbones import BEiT


@pytest.mark.parametrize('shared', [True, False])
def test_raw_output_equals_timm_forward_features(shared):
    timm_model = Beit(
        img_size=64, patch_size=16, num_classes=10, global_pool='token',
        embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.,
        use_abs_pos_emb=True, use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared, init_values=0.1).eval()
    with torch.no_grad():  # timm zero-initialises the tables: randomise all
        for param in timm_model.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    ours = BEiT(
        arch=dict(embed_dims=64, num_layers=3, num_heads=4,
                  feedforward_channels=256),
        img_size=64, patch_size=16, use_abs_pos_emb=True,
        use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared).eval()
    state = convert_state_dict({'model': timm_model.state_dict()}, 'timm')
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = timm_model.forward_features(x)
        got = ours(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
