"""BEiTPretrainer (v1 without neck, v2 with patch aggregation), tiny."""
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmpretrain.structures import DataSample

from beit_plugin.models.algorithms import BEiTPretrainer
from beit_plugin.models.algorithms import masked_rows as rows_module
from beit_plugin.models.algorithms.masked_rows import masked_rows
from helpers import (PRETRAINING_CONFIGS, config_id,
                     loss_without_device_syncs)

ARCH = dict(embed_dims=32, num_layers=3, num_heads=2, feedforward_channels=64)


def build(v2: bool, pixel: bool = False, **backbone) -> BEiTPretrainer:
    """A tiny v1/v2 pretrainer with visual-token targets, or with the
    pixel-regression ablation's head and target if ``pixel``; ``backbone``
    adds backbone arguments."""
    if pixel:
        head = dict(type='PixelRegressionHead', in_channels=32,
                    out_channels=8 * 8 * 3)
        target = dict(type='PatchPixels', patch_size=8)
    else:
        head = dict(type='BEiTMIMHead', in_channels=32, num_embed=16)
        target = dict(type='VQKDTokenizer', encoder=dict(
            arch=ARCH, img_size=32, patch_size=8), num_embed=16, frozen=True)
    return BEiTPretrainer(
        backbone=dict(type='BEiT', arch=ARCH, img_size=32, patch_size=8,
                      use_mask_token=True, final_norm=not v2,
                      out_indices=(1, -1) if v2 else -1, **backbone),
        neck=dict(type='BEiTV2PatchAggregation', embed_dims=32, num_heads=2,
                  feedforward_channels=64, early_layers=2,
                  backbone_layers=3) if v2 else None,
        head=head,
        target_generator=target)


def batch(n: int = 4):
    images = torch.randn(n, 3, 32, 32)
    samples = []
    for i in range(n):
        sample = DataSample()
        mask = torch.zeros(4, 4, dtype=torch.bool)
        mask[i % 4, :] = True
        sample.set_field(mask, 'mask')
        samples.append(sample)
    return [images, images.clone()], samples


@pytest.mark.parametrize('v2', [False, True])
def test_loss_finite_masked_only_and_decreasing(v2):
    torch.manual_seed(0)
    model = build(v2)
    inputs, samples = batch()
    seen = []
    model.head.cls_head.register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    losses = model.loss(inputs, samples)
    assert set(losses) == ({'loss_mim', 'loss_mim_1', 'acc_mim'} if v2
                           else {'loss_mim', 'acc_mim'})
    assert all(count == 4 * 4 for count in seen)  # 4 masked of 16, x4 imgs
    assert not any(p.requires_grad
                   for p in model.target_generator.parameters())
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        losses = model.loss(inputs, samples)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        first = first if first is not None else total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert torch.isfinite(total)
    assert total.item() < 0.5 * first
    model.train()
    assert not model.target_generator.training


def test_tokenizer_grid_mismatch_is_reported():
    model = build(False)
    inputs, samples = batch()
    inputs[1] = torch.randn(4, 3, 64, 64)  # tokenizer sees an 8x8 grid
    with pytest.raises(ValueError, match=r'\(4, 64\).*\(4, 16\)'):
        model.loss(inputs, samples)


def test_patch_pixels_are_patches_standardised_one_by_one():
    from beit_plugin.models.targets import PatchPixels
    image = torch.randn(2, 3, 16, 24) * 5 + 3
    target = PatchPixels(patch_size=8)(image)
    assert target.shape == (2, 6, 192)
    # patch (row 1, column 2) of image 1, pixel-major with RGB innermost
    patch = image[1, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1)
    expected = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
    torch.testing.assert_close(target[1, 5], expected)
    raw = PatchPixels(patch_size=8, normalize=False)(image)
    torch.testing.assert_close(raw[1, 5], patch)
    with pytest.raises(ValueError, match='20 x 24 px.*8 px'):
        PatchPixels(patch_size=8)(torch.randn(1, 3, 20, 24))


@pytest.mark.parametrize('v2', [False, True])
def test_pixel_regression_learns_masked_patches_only(v2):
    torch.manual_seed(0)
    model = build(v2, pixel=True)
    _, samples = batch()
    # every image repeats one random patch: masked pixels are predictable
    # from the visible ones
    images = torch.randn(4, 3, 8, 8).repeat(1, 1, 4, 4)
    inputs = [images, images.clone()]
    seen = []
    model.head.reg_head.register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    losses = model.loss(inputs, samples)
    assert set(losses) == ({'loss_mim', 'loss_mim_1'} if v2 else
                           {'loss_mim'})
    assert all(count == 4 * 4 for count in seen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        total = sum(model.loss(inputs, samples).values())
        first = first if first is not None else total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < 0.5 * first
    # the loss is the MSE of the masked patches' standardised pixels
    target = model.target_generator(inputs[1])
    mask = torch.stack([s.mask for s in samples]).flatten(1)
    assert target.shape == (4, 16, 192)
    if not v2:
        with torch.no_grad():
            feats = model.backbone(inputs[0], mask)[-1][:, 1:]
            torch.testing.assert_close(
                model.loss(inputs, samples)['loss_mim'],
                ((model.head(feats, mask) - target[mask])**2).mean())


def test_mask_of_another_grid_with_as_many_patches_is_refused():
    """A mask generator with input_size=(2, 8) on the 4 x 4 grid: as many
    patches, misplaced masks; refused, not trained on."""
    model = build(True)
    inputs, samples = batch()
    for sample in samples:
        sample.set_field(sample.mask.reshape(2, 8), 'mask')
    with pytest.raises(ValueError, match=r'mask of shape \(4, 2, 8\) is not '
                       r'on the \(4, 4\) patch grid'):
        model.loss(inputs, samples)


#: Our pretrainer's parameter names -> the official
#: VisionTransformerForMaskedImageModeling(CLS) ones (modeling_pretrain.py).
OFFICIAL_PREFIXES = (('backbone.', ''),
                     ('neck.cls_pt_layers.', 'cls_pt_layers.'),
                     ('neck.norm.', 'norm.'), ('head.cls_head.', 'lm_head.'),
                     ('head.reg_head.', 'lm_head.'))


def official_pretraining_decay(name: str, param: torch.Tensor,
                               weight_decay: float) -> float:
    """run_beit_pretraining.py / run_beitv2_pretraining.py:
    ``create_optimizer(args, model)``, so optim_factory.py's skip list is
    ``model.no_weight_decay()`` = {'pos_embed', 'cls_token'} and
    get_parameter_groups runs without a layer scale (lr scale 1)."""
    for ours, theirs in OFFICIAL_PREFIXES:
        if name.startswith(ours):
            name = theirs + name[len(ours):]
            break
    else:
        raise KeyError(name)
    skip = {'pos_embed', 'cls_token'}
    if param.ndim <= 1 or name.endswith('.bias') or name in skip:
        return 0.
    return weight_decay


@pytest.mark.parametrize('path', PRETRAINING_CONFIGS, ids=config_id)
def test_pretraining_recipes_decay_as_the_official_pretraining(path):
    """1-d parameters, biases, pos_embed and cls_token without decay; the
    mask token, the shared relative position table, the aggregation
    branch's and the head's weights decayed; one learning rate; the frozen
    tokenizer left out."""
    cfg = Config.fromfile(path).optim_wrapper
    for v2 in (False, True):
        model = build(v2, use_abs_pos_emb=True)
        with DefaultScope.overwrite_default_scope('beit_plugin'):
            wrapper = build_optim_wrapper(model, dict(
                type='OptimWrapper', optimizer=cfg.optimizer,
                constructor=cfg.constructor,
                paramwise_cfg=cfg.paramwise_cfg))
        groups = {id(p): group for group in wrapper.optimizer.param_groups
                  for p in group['params']}
        trainable = {name: param for name, param in model.named_parameters()
                     if param.requires_grad}
        assert len(groups) == len(trainable)
        assert 'backbone.mask_token' in trainable
        for name, param in trainable.items():
            group = groups[id(param)]
            assert group['weight_decay'] == official_pretraining_decay(
                name, param, cfg.optimizer.weight_decay), name
            assert group['lr'] == cfg.optimizer.lr, name


@pytest.mark.parametrize('backbone,named', [
    (dict(final_norm=True), 'final_norm=True'),
    (dict(out_indices=(0, -1)), 'out_indices=(0, 2)'),
])
def test_patch_aggregation_needs_its_backbone_pairing(backbone, named):
    """v2's neck holds the final norm and reads block early_layers - 1."""
    args = dict(type='BEiT', arch=ARCH, img_size=32, patch_size=8,
                use_mask_token=True, final_norm=False, out_indices=(1, -1))
    args.update(backbone)
    with pytest.raises(ValueError, match=re.escape(named)):
        BEiTPretrainer(
            backbone=args,
            neck=dict(type='BEiTV2PatchAggregation', embed_dims=32,
                      num_heads=2, feedforward_channels=64, early_layers=2,
                      backbone_layers=3),
            head=dict(type='BEiTMIMHead', in_channels=32, num_embed=16),
            target_generator=dict(type='PatchPixels', patch_size=8))


def ragged_batch(n: int = 3):
    """Masks of 5, 2 and 7 patches on the 4 x 4 grid, scattered."""
    images = torch.randn(n, 3, 32, 32)
    samples = []
    for i, count in enumerate((5, 2, 7)[:n]):
        mask = torch.zeros(16, dtype=torch.bool)
        mask[torch.randperm(16, generator=torch.Generator().manual_seed(i))
             [:count]] = True
        sample = DataSample()
        sample.set_field(mask.view(4, 4), 'mask')
        samples.append(sample)
    return [images, torch.randn(n, 3, 32, 32)], samples


def test_masked_rows_are_cls_then_the_masked_patches_in_order():
    _, samples = ragged_batch()
    mask = torch.stack([s.mask.flatten() for s in samples])
    rows, scored = masked_rows(mask)
    assert rows.shape == (3, 1 + 7) and scored.shape == (3, 7)
    for b in range(3):
        count = int(mask[b].sum())
        assert rows[b, 0] == 0  # CLS
        assert rows[b, 1:1 + count].tolist() == \
            (mask[b].nonzero().flatten() + 1).tolist()
        assert scored[b].tolist() == [True] * count + [False] * (7 - count)
        assert not mask[b][rows[b, 1 + count:] - 1].any()  # padding


@pytest.mark.parametrize('v2', [False, True])
@pytest.mark.parametrize('pixel', [False, True])
def test_last_blocks_on_masked_rows_equal_the_full_model(v2, pixel):
    """The loss computes the last backbone block (and v2's last aggregation
    block) for the CLS and masked rows only; losses and every gradient equal
    the full model's scored at the masked patches, by hand."""
    torch.manual_seed(0)
    model = build(v2, pixel, layer_scale_init_value=0.1)
    model.train()
    inputs, samples = ragged_batch()
    losses = model.loss(inputs, samples)
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    model.zero_grad()
    total.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()
           if p.grad is not None}

    mask = torch.stack([s.mask.flatten() for s in samples])
    with torch.no_grad():
        target = (model.target_generator(inputs[1]) if pixel else
                  model.target_generator.get_codebook_indices(inputs[1]))
    feats = model.backbone(inputs[0], mask)
    branches = model.neck(feats, *model.backbone.neck_inputs(inputs[0])) \
        if v2 else [feats[-1][:, 1:]]
    layer = model.head.reg_head if pixel else model.head.cls_head
    expected = []
    for branch in branches:
        out = layer(branch[mask])
        expected.append(
            ((out - target[mask])**2).mean() if pixel else
            torch.nn.functional.cross_entropy(out, target[mask]))
    model.zero_grad()
    sum(expected).backward()
    names = ['loss_mim', 'loss_mim_1'][:len(expected)]
    for name, value in zip(names, expected):
        torch.testing.assert_close(losses[name], value)
    assert set(got) == {n for n, p in model.named_parameters()
                        if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(got[name], param.grad,
                                       rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('v2', [False, True])
def test_masked_count_read_after_the_tokenizer_is_queued(v2, monkeypatch):
    """The pruned rows' count is the step's one host read: started before
    the tokenizer runs and read after it is queued (on a GPU the device
    works through the tokenizer meanwhile), and it is the batch's largest
    masked count."""
    torch.manual_seed(0)
    model = build(v2)
    inputs, samples = ragged_batch()
    events = []
    start = rows_module.start_host_read

    def recording_start(value):
        events.append('start')
        read = start(value)

        def recording_read():
            events.append(('read', read()))
            return events[-1][1]
        return recording_read

    monkeypatch.setattr(rows_module, 'start_host_read', recording_start)
    model.target_generator.encoder.register_forward_pre_hook(
        lambda *args: events.append('tokenizer'))
    model.loss(inputs, samples)
    most = max(int(s.mask.sum()) for s in samples)
    assert events == ['start', 'tokenizer', ('read', most)]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('v2', [False, True])
def test_loss_on_a_gpu_never_synchronises(v2):
    """No operation of the loss waits for the whole device (CUDA's sync
    debug mode raises on each one); the pruned rows' count waits only for
    its own copy."""
    torch.manual_seed(0)
    model = build(v2).cuda()
    losses = loss_without_device_syncs(model, *ragged_batch())
    assert all(torch.isfinite(v).all() for v in losses.values())
