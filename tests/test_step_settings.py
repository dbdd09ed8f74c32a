"""Settings of the training step that are about speed, not results: every
config's AdamW is torch's fused one, and it steps as the default one does;
the parts of a pretraining step trace into single graphs for
``torch.compile``."""
import pytest
import torch
import torch._dynamo as dynamo
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.optim import build_optim_wrapper

from beit_plugin.registry import MODELS
from helpers import CONFIGS, ROOT, config_id

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob('*.py')
                     if '_base_' not in p.parts)


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=config_id)
def test_every_config_uses_fused_adamw(path) -> None:
    optimizer = Config.fromfile(path).optim_wrapper.optimizer
    assert optimizer.type == 'AdamW' and optimizer.get('fused') is True


def _demo_model() -> torch.nn.Module:
    cfg = Config.fromfile(ROOT / 'configs' / 'beit_pretrain.py')
    cfg.model.target_generator.init_cfg = None  # random tokenizer: no file
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        return MODELS.build(cfg.model), cfg


def test_fused_adamw_steps_as_the_per_tensor_one() -> None:
    """The demo's optim wrapper (param groups without decay, clipping)
    with ``fused=True`` and without: five steps, the same weights."""
    torch.manual_seed(0)
    model, cfg = _demo_model()
    twin = _demo_model()[0]
    twin.load_state_dict(model.state_dict())
    wrappers = []
    for fused, net in ((True, model), (False, twin)):
        wrapper_cfg = cfg.optim_wrapper.copy()
        wrapper_cfg.optimizer = dict(wrapper_cfg.optimizer, fused=fused)
        with DefaultScope.overwrite_default_scope('beit_plugin'):
            wrappers.append(build_optim_wrapper(net, wrapper_cfg))
    assert wrappers[0].optimizer.defaults['fused'] is True
    assert not wrappers[1].optimizer.defaults['fused']
    for step in range(5):
        grads = {name: torch.randn_like(p)
                 for name, p in model.named_parameters() if p.requires_grad}
        for net, wrapper in zip((model, twin), wrappers):
            for name, p in net.named_parameters():
                if p.requires_grad:
                    p.grad = grads[name].clone()
            wrapper.step()
    changed = 0
    for (name, mine), theirs in zip(model.named_parameters(),
                                    twin.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6,
                                   msg=name)
        changed += mine.requires_grad
    assert changed > 100  # the weights did move


def _breaks(fn, *args) -> int:
    return dynamo.explain(fn)(*args).graph_break_count


def test_pretraining_parts_trace_without_graph_breaks() -> None:
    """``compile=True`` (MMEngine compiles ``train_step``): the backbone
    with a mask and the shared relative position bias, v2's aggregation neck
    and the tokenizer each become one graph."""
    model, _ = _demo_model()
    model.train()
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 1:6] = True
    backbone = model.backbone
    assert _breaks(backbone, images, mask) == 0
    feats = backbone(images, mask)
    grid = (8, 8)
    assert _breaks(model.neck, feats, grid, backbone.rel_pos_bias(grid)) == 0
    assert _breaks(model.target_generator.get_codebook_indices, images) == 0
    dynamo.reset()
