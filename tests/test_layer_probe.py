"""The offline layer-wise linear probe: the L-BFGS logistic regression, the
per-block features, and tools/probe_layers.py on a tiny config and data."""
import json
from pathlib import Path

import pytest
import torch
from mmengine.registry import DefaultScope

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.evaluation import (block_features, fit_logistic_probe,
                                    patch_labels)
from beit_plugin.models.backbones import BEiT
from helpers import ROOT, TINY_ARCH, load_tool, mmengine_log


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
    with mmengine_log() as logged, \
            DefaultScope.overwrite_default_scope('mmengine'):
        results = tool.main([str(tiny_config), '--checkpoint',
                             str(checkpoint), '--out', str(out)])
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


# ---------------------------------------------------------------------------
# the dense (segmentation) probe
# ---------------------------------------------------------------------------


def test_patch_labels_are_majorities_with_too_little_labelled_ignored():
    seg = torch.full((1, 4, 4), 255)
    seg[0, :2, :2] = torch.tensor([[1, 1], [2, 255]])  # majority 1
    seg[0, :2, 2:] = torch.tensor([[3, 4], [4, 3]])  # tie: the smaller
    seg[0, 2:, :2] = torch.tensor([[255, 255], [255, 0]])  # 1/4 labelled
    seg[0, 2:, 2:] = torch.tensor([[0, 0], [255, 255]])  # 2/4 labelled
    assert patch_labels(seg, 2).tolist() == [[1, 3, 255, 0]]
    assert patch_labels(seg, 2, min_labelled=0.75).tolist() == [[1, 3, 255,
                                                                  255]]
    with pytest.raises(ValueError, match='4 x 4 px do not split into 3 px'):
        patch_labels(seg, 3)


def test_balanced_probe_weights_and_scores_classes_equally():
    """A rare class overlapping a frequent one: unweighted, the boundary
    favours the frequent class; balanced, both classes score alike."""
    g = torch.Generator().manual_seed(0)

    def draw(n_frequent, n_rare):
        x = torch.cat([torch.randn(n_frequent, 1, generator=g),
                       torch.randn(n_rare, 1, generator=g) + 2])
        return x, torch.tensor([0] * n_frequent + [1] * n_rare)

    train_x, train_y = draw(9000, 1000)
    val_x, val_y = draw(1000, 1000)  # balanced: top-1 = mean class accuracy
    plain = fit_logistic_probe(train_x, train_y, val_x, val_y, 2)
    balanced = fit_logistic_probe(train_x, train_y, val_x, val_y, 2,
                                  balanced=True)
    assert plain < 76 < 80 < balanced  # about 71 and 83
    # the score is the mean over classes, not the top-1: a 99:1 val set
    # scored by an all-"frequent" probe gives 50, not 99
    zeros = torch.zeros(100, 1)
    labels = torch.tensor([0] * 99 + [1])
    assert fit_logistic_probe(zeros, labels, zeros, labels, 2,
                              balanced=False) == pytest.approx(99)
    assert fit_logistic_probe(zeros, labels, zeros, labels, 2,
                              balanced=True) == pytest.approx(50)


def test_dense_block_features_are_every_patch_token():
    backbone = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8,
                    out_indices=(1, ), out_type='raw')
    images = torch.randn(3, 3, 32, 32)
    features = block_features(backbone, images, batch_size=2, dense=True)
    assert list(features) == ['block2 patch']
    with torch.no_grad():
        tokens = backbone(images)[0]
    torch.testing.assert_close(features['block2 patch'],
                               tokens[:, 1:].reshape(3 * 16, -1))


TINY_SEG_CONFIG = """
_base_ = '{base}'
model = dict(backbone=dict(arch={arch}, out_indices=(0, 1), init_cfg=None))
train_dataloader = dict(dataset=dict(data_root='{root}'))
val_dataloader = dict(dataset=dict(data_root='{root}'))
"""


def test_tool_dense_probes_patch_tokens_of_covering_crops(
        tmp_path, monkeypatch, capsys):
    make_demo_data(tmp_path / 'demo', cls_train=8, cls_val=8, seg_train=3,
                   seg_val=2)
    config = tmp_path / 'tiny_seg.py'
    config.write_text(TINY_SEG_CONFIG.format(
        base=ROOT / 'configs/seg/beit_demo_upernet.py',
        arch=dict(TINY_ARCH, num_layers=2), root=tmp_path / 'demo/ade'))
    tool = load_tool('probe_layers')
    seen = []

    def recording_fit(train_x, train_y, val_x, val_y, num_classes, **kw):
        seen.append((train_x, train_y, val_x, val_y, num_classes, kw))
        return fit_logistic_probe(train_x, train_y, val_x, val_y,
                                  num_classes, **kw)

    monkeypatch.setattr(tool, 'fit_logistic_probe', recording_fit)
    with DefaultScope.overwrite_default_scope('mmengine'):
        results = tool.main([str(config), '--dense'])
    assert list(results) == ['block1 patch', 'block2 patch']
    assert all(0 <= value <= 100 for value in results.values())
    assert 'block  patch tokens' in capsys.readouterr().out
    # 96 px images, 64 px crops at offsets 0 and 32: 4 crops of 8 x 8 patches
    for train_x, train_y, val_x, val_y, num_classes, kw in seen:
        assert kw['balanced'] is True
        assert num_classes == 9
        assert 0 < len(train_y) <= 3 * 4 * 64 and 0 < len(val_y) <= 2 * 4 * 64
        assert train_x.shape == (len(train_y), TINY_ARCH['embed_dims'])
        assert val_x.shape == (len(val_y), TINY_ARCH['embed_dims'])
        assert 0 <= int(train_y.min()) and int(train_y.max()) < 9
    assert tool._crop_offsets(96, 64) == [0, 32]
    assert tool._crop_offsets(100, 64) == [0, 32, 36]
    assert tool._crop_offsets(64, 64) == [0]
