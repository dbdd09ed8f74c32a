"""The offline layer-wise linear probe: the L-BFGS logistic regression, the
per-block features, and tools/probe_layers.py on a tiny config and data."""
import json
import logging
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.evaluation import block_features, fit_logistic_probe
from beit_plugin.models.backbones import BEiT
from conftest import TINY_ARCH
from test_compat import load_tool

ROOT = Path(__file__).resolve().parents[1]


def clusters(n_per_class: int, num_classes: int = 4, dims: int = 16,
             seed: int = 0):
    """Gaussian blobs ``(n*K, dims)`` around well-separated centres."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.eye(num_classes, dims)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dims, generator=g)
    return x, y


def test_probe_separates_clusters_and_does_not_see_val_labels():
    train_x, train_y = clusters(50)
    val_x, val_y = clusters(25, seed=1)
    assert fit_logistic_probe(train_x, train_y, val_x, val_y, 4) >= 95
    # trained on shuffled labels, it cannot predict the true val labels
    shuffled = train_y[torch.randperm(len(train_y),
                                      generator=torch.Generator().manual_seed(0))]
    assert fit_logistic_probe(train_x, shuffled, val_x, val_y, 4) < 60


def test_probe_rejects_mismatched_features():
    x, y = clusters(5)
    with pytest.raises(ValueError, match='16 channels but val features 8'):
        fit_logistic_probe(x, y, x[:, :8], y, 4)
    with pytest.raises(ValueError, match=r'\(M,\) labels'):
        fit_logistic_probe(x, y[:-1], x, y, 4)


def test_block_features_are_cls_and_mean_patch_token_of_each_block():
    backbone = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8,
                    out_indices=(0, 1), out_type='raw')
    images = torch.randn(5, 3, 32, 32)
    features = block_features(backbone, images, batch_size=2)
    assert list(features) == ['block1 cls', 'block1 avg', 'block2 cls',
                              'block2 avg']
    with torch.no_grad():
        outs = backbone(images)
    for k, block in enumerate(('block1', 'block2')):
        torch.testing.assert_close(features[f'{block} cls'], outs[k][:, 0])
        torch.testing.assert_close(features[f'{block} avg'],
                                   outs[k][:, 1:].mean(1))
    backbone.out_type = 'featmap'
    with pytest.raises(ValueError, match="out_type='raw'"):
        block_features(backbone, images)


TINY_CONFIG = """
_base_ = '{base}'
model = dict(backbone=dict(arch=dict(_delete_=True, **{arch}),
                           init_cfg=None))
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{root}'))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root='{root}'))
"""


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    make_demo_data(tmp_path / 'demo', cls_train=16, cls_val=8, seg_train=1,
                   seg_val=1)
    config = tmp_path / 'tiny_linear.py'
    config.write_text(TINY_CONFIG.format(
        base=ROOT / 'configs/linear_probe/beit_demo_linear.py',
        arch=TINY_ARCH, root=tmp_path / 'demo/imagenet'))
    return config


def test_tool_probes_every_block_of_the_given_checkpoint(
        tiny_config, tmp_path, monkeypatch, capsys):
    tool = load_tool('probe_layers')
    seen = []

    def recording_fit(train_x, train_y, val_x, val_y, num_classes, **kw):
        seen.append((train_x, train_y, val_x, num_classes))
        return fit_logistic_probe(train_x, train_y, val_x, val_y,
                                  num_classes, **kw)

    monkeypatch.setattr(tool, 'fit_logistic_probe', recording_fit)
    # a checkpoint whose backbone weights are all zero: every feature is 0
    zero = BEiT(arch=TINY_ARCH, img_size=64, patch_size=8)
    state = {f'backbone.{k}': torch.zeros_like(v)
             for k, v in zero.state_dict().items()}
    checkpoint = tmp_path / 'zero.pth'
    torch.save(dict(state_dict=state), checkpoint)
    out = tmp_path / 'probe.json'
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        with DefaultScope.overwrite_default_scope('mmengine'):
            results = tool.main([str(tiny_config), '--checkpoint',
                                 str(checkpoint), '--out', str(out)])
    finally:
        logger.removeHandler(handler)
    # one line names the weights; no per-parameter initialisation dump
    assert f'backbone: {checkpoint}' in capsys.readouterr().out.splitlines()
    assert not [m for m in logged if 'torch.Size' in m]
    assert list(results) == ['block1 cls', 'block1 avg', 'block2 cls',
                             'block2 avg']
    assert json.loads(out.read_text()) == results
    assert len(seen) == 4
    for train_x, train_y, val_x, num_classes in seen:
        assert train_x.shape == (16, TINY_ARCH['embed_dims'])
        assert val_x.shape == (8, TINY_ARCH['embed_dims'])
        assert sorted(train_y.tolist()) == sorted(list(range(8)) * 2)
        assert num_classes == 8
        assert not train_x.any() and not val_x.any()

    # the same config without a checkpoint probes a random backbone
    seen.clear()
    with DefaultScope.overwrite_default_scope('mmengine'):
        tool.main([str(tiny_config)])
    assert all(train_x.std(0).min() > 0 for train_x, *_ in seen)
    assert 'backbone: random initialisation' in capsys.readouterr().out
