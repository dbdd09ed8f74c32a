"""The BEiT backbone on tiny configs."""
from pathlib import Path

import pytest
import torch
from scipy.interpolate import RectBivariateSpline

from beit_plugin.models.backbones import BEiT
from beit_plugin.models.backbones.relative_position import (
    _geometric_offsets, num_relative_distances, resize_relative_position_table)
from helpers import TINY_ARCH, randomise


def tiny(**kwargs) -> BEiT:
    cfg = dict(arch=TINY_ARCH, img_size=32, patch_size=8)
    cfg.update(kwargs)
    return BEiT(**cfg)


@pytest.mark.parametrize('out_type,shape', [
    ('raw', (2, 17, 32)),
    ('cls_token', (2, 32)),
    ('featmap', (2, 32, 4, 4)),
    ('avg_featmap', (2, 32)),
])
def test_output_shapes(out_type, shape):
    model = tiny(out_type=out_type, out_indices=(0, -1)).eval()
    outs = model(torch.randn(2, 3, 32, 32))
    assert len(outs) == 2
    assert all(out.shape == shape for out in outs)


def test_featmap_is_patch_tokens_and_avg_uses_fc_norm():
    model = randomise(tiny(out_type='raw')).eval()
    x = torch.randn(2, 3, 32, 32)
    raw = model(x)[0]
    model.out_type = 'featmap'
    fmap = model(x)[0]
    assert torch.equal(fmap.flatten(2).transpose(1, 2), raw[:, 1:])
    avg = randomise(tiny(out_type='avg_featmap')).eval()
    avg.load_state_dict(model.state_dict(), strict=False)
    expected = avg.fc_norm(raw[:, 1:].mean(1))
    torch.testing.assert_close(avg(x)[0], expected)


def test_mask_replaces_exactly_masked_patch_embeddings():
    model = randomise(tiny(use_mask_token=True, use_abs_pos_emb=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 0:2] = True
    mask[1, 3, 3] = True
    plain, _ = model.embed(x)
    masked, _ = model.embed(x, mask)
    flat = torch.cat([torch.zeros(2, 1, dtype=torch.bool),
                      mask.flatten(1)], 1)
    assert torch.equal(masked[~flat], plain[~flat])
    expected = model.mask_token[0, 0] + model.pos_embed[0, 1:][mask[0]
                                                               .flatten()]
    torch.testing.assert_close(masked[0][flat[0]], expected)
    assert not torch.allclose(masked[0][flat[0]], plain[0][flat[0]])
    # (B, N) masks work the same as (B, H, W) ones
    torch.testing.assert_close(model(x, mask.flatten(1))[0],
                               model(x, mask)[0])


def test_mask_errors_are_clear():
    with pytest.raises(ValueError, match='mask token'):
        tiny()(torch.randn(1, 3, 32, 32), torch.zeros(1, 16, dtype=bool))
    with pytest.raises(ValueError, match=r'\(1, 9\)'):
        tiny(use_mask_token=True)(torch.randn(1, 3, 32, 32),
                                  torch.zeros(1, 9, dtype=bool))
    # as many patches as the 4 x 4 grid, but another grid: refused
    with pytest.raises(ValueError, match=r'mask of shape \(1, 2, 8\) is not '
                       r'on the \(4, 4\) patch grid'):
        tiny(use_mask_token=True)(torch.randn(1, 3, 32, 32),
                                  torch.zeros(1, 2, 8, dtype=bool))


def test_input_not_multiple_of_patch_names_both_shapes():
    with pytest.raises(ValueError, match=r'\(1, 3, 30, 32\).*patch size 8'):
        tiny()(torch.randn(1, 3, 30, 32))


def test_relative_table_resize_matches_official_spline_and_keeps_offsets():
    src, dst = (4, 4), (7, 7)
    table = torch.randn(num_relative_distances(src), 3, dtype=torch.float64)
    out = resize_relative_position_table(table, dst)
    assert out.shape == (num_relative_distances(dst), 3)
    assert torch.equal(out[-3:], table[-3:])  # cls entries untouched
    s, d = 2 * src[0] - 1, 2 * dst[0] - 1
    grid_in, grid_out = table[:-3].view(s, s, 3), out[:-3].view(d, d, 3)
    for dy in (-1, 0, 1):  # offsets that the official grid keeps in place
        for dx in (-1, 0, 1):
            torch.testing.assert_close(grid_out[d // 2 + dy, d // 2 + dx],
                                       grid_in[s // 2 + dy, s // 2 + dx])
    # the official resize: scipy interp2d(kind='cubic') on the geometric grid
    knots = _geometric_offsets(s, d)
    points = torch.arange(-(d // 2), d // 2 + 1).double().numpy()
    for head in range(3):
        spline = RectBivariateSpline(knots, knots,
                                     grid_in[..., head].numpy(), s=0)
        torch.testing.assert_close(
            grid_out[..., head],
            torch.from_numpy(spline(points, points)), atol=1e-10, rtol=0)


def test_load_resizes_tables_and_expands_shared_bias():
    source = randomise(tiny(use_abs_pos_emb=True))  # shared bias, 4x4 grid
    target = tiny(img_size=64, use_abs_pos_emb=True,
                  use_shared_rel_pos_bias=False, use_rel_pos_bias=True)
    state = source.state_dict()
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    shared = state['rel_pos_bias.relative_position_bias_table']
    expected = resize_relative_position_table(shared, (8, 8))
    for block in target.blocks:
        torch.testing.assert_close(
            block.attn.relative_position_bias_table.data, expected)
    assert target.blocks[0].attn.relative_position_bias_table.data_ptr() != \
        target.blocks[1].attn.relative_position_bias_table.data_ptr()
    pos = target.pos_embed.data
    assert torch.equal(pos[:, 0], state['pos_embed'][:, 0])
    assert pos.shape == (1, 65, 32)
    # a constant field stays constant through the bicubic resize
    flat = source.state_dict()
    flat['pos_embed'] = torch.full_like(flat['pos_embed'], 0.5)
    target.load_state_dict(flat, strict=False)
    torch.testing.assert_close(target.pos_embed.data,
                               torch.full((1, 65, 32), 0.5))


def test_shared_and_per_layer_bias_agree_when_tables_agree():
    shared = randomise(tiny()).eval()
    per_layer = tiny(use_shared_rel_pos_bias=False,
                     use_rel_pos_bias=True).eval()
    per_layer.load_state_dict(shared.state_dict())  # expands the shared table
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(per_layer(x)[0], shared(x)[0])
    with torch.no_grad():  # (a constant shift would cancel in the softmax)
        table = per_layer.blocks[1].attn.relative_position_bias_table
        table.add_(torch.randn_like(table))
    assert not torch.allclose(per_layer(x)[0], shared(x)[0])


def test_neck_inputs_are_the_grid_and_the_shared_bias():
    """What BEiT v2's patch aggregation gets from the backbone: the patch
    grid of the images and the shared bias the blocks add on it."""
    model = randomise(tiny())
    images = torch.randn(2, 3, 48, 32)  # another size than built for
    grid, bias = model.neck_inputs(images)
    assert grid == model.patch_grid_of(images) == (6, 4)
    torch.testing.assert_close(bias, model.rel_pos_bias((6, 4)))
    assert model.shared_bias(grid) is not None
    per_layer = tiny(use_shared_rel_pos_bias=False, use_rel_pos_bias=True)
    assert per_layer.neck_inputs(images) == ((6, 4), None)


def test_other_resolution_at_runtime_equals_model_built_for_it():
    small = randomise(tiny(use_abs_pos_emb=True)).eval()
    big = tiny(img_size=48, use_abs_pos_emb=True).eval()
    big.load_state_dict(small.state_dict())
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(small(x)[0], big(x)[0])


def test_with_cp_same_output_and_gradients():
    plain = randomise(tiny(drop_path_rate=0.))
    ckpt = tiny(with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out_plain, out_ckpt = plain(x)[0], ckpt(x)[0]
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(),
                                   ckpt.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=name)


def test_frozen_stages():
    model = tiny(frozen_stages=1, use_abs_pos_emb=True)
    model.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {'cls_token', 'pos_embed', 'patch_embed.proj.weight',
            'rel_pos_bias.relative_position_bias_table',
            'blocks.0.attn.qkv.weight'} <= frozen
    assert not any(n.startswith(('blocks.1', 'norm')) for n in frozen)
    assert not model.blocks[0].training and model.blocks[1].training
    all_frozen = tiny(frozen_stages=2, out_type='avg_featmap')
    assert not any(p.requires_grad for p in all_frozen.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match='out_type'):
        tiny(out_type='tokens')
    with pytest.raises(ValueError, match='out_indices entry 5'):
        tiny(out_indices=5)
    with pytest.raises(ValueError, match="arch 'huge'"):
        BEiT(arch='huge')
    with pytest.raises(ValueError, match='img_size'):
        tiny(img_size=30)


def test_arch_presets():
    model = BEiT(arch='small', img_size=32)
    assert model.embed_dims == 384 and len(model.blocks) == 12
    assert model.blocks[0].mlp.fc1.out_features == 1536


def test_missing_pretrained_checkpoint_names_the_file(tmp_path,
                                                      monkeypatch):
    """A missing checkpoint: a one-line error naming the file (its
    ``checkpoint``, where tools/train.py adds the command that writes it:
    tests/test_compat.py::test_missing_checkpoint_hint); the backbone knows
    nothing of the repository's folders."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    path = 'work_dirs/beit_pretrain/no_such_iter.pth'
    model = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8,
                 init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(FileNotFoundError) as error:
        model.init_weights()
    assert str(error.value) == f'init_cfg checkpoint {path} does not exist'
    assert error.value.checkpoint == path
    other = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'x.pth')))
    with pytest.raises(FileNotFoundError, match=r'x\.pth does not exist$'):
        other.init_weights()


def test_cpu_training_attention_equals_sdpa_in_output_and_gradients(
        monkeypatch):
    """On a CPU a bias that needs a gradient takes the explicit product
    (Attention._explicit); it must be the fused kernel's function."""
    import torch.nn.functional as F

    from beit_plugin.models.backbones.transformer_block import Attention
    torch.manual_seed(0)
    attn = Attention(32, 4, window=(3, 4)).train()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
        attn.q_bias.normal_()
    x = torch.randn(2, 13, 32, requires_grad=True)
    shared = torch.randn(4, 13, 13, requires_grad=True)
    fused = F.scaled_dot_product_attention
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    def run():
        out = attn(x, (3, 4), shared)
        grads = torch.autograd.grad(
            (out * torch.arange(32.)).sum(),
            [x, shared, attn.relative_position_bias_table, attn.q_bias])
        return out, grads

    monkeypatch.setattr(F, 'scaled_dot_product_attention', counting)
    explicit, explicit_grads = run()
    assert calls == []  # the explicit product, not the kernel
    # the same module through the kernel: the bias detached from the check
    monkeypatch.setattr(
        Attention, '_explicit',
        lambda self, q, k, v, bias: (fused(q, k, v, attn_mask=bias), None))
    kernel, kernel_grads = run()
    torch.testing.assert_close(explicit, kernel, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(explicit_grads, kernel_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert explicit_grads[2].abs().sum() > 0  # the table learns


@pytest.mark.parametrize('with_cp', [False, True])
@pytest.mark.parametrize('shared', [False, True])
@pytest.mark.parametrize('training', [False, True])
def test_last_block_on_chosen_rows_equals_those_rows(with_cp, shared,
                                                     training):
    """``rows``: the last block computes some token rows only (per sample),
    equal to the full output's rows in value and in every gradient; with
    the shared or per-layer bias, checkpointed or not, in SDPA (eval) and
    the CPU training path."""
    torch.manual_seed(0)
    model = randomise(tiny(with_cp=with_cp, use_shared_rel_pos_bias=shared,
                           use_rel_pos_bias=not shared,
                           layer_scale_init_value=0.1,
                           out_indices=(0, -1))).train(training)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    rows = torch.stack([torch.randperm(17)[:5] for _ in range(3)])
    early, last = model(x, rows=rows)
    assert last.shape == (3, 5, 32) and early.shape == (3, 17, 32)
    weights = torch.randn(3, 5, 32)
    (last * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    got_x = x.grad.clone()
    model.zero_grad()
    x.grad = None
    full = model(x)[-1]
    expected = full[torch.arange(3)[:, None], rows]
    torch.testing.assert_close(last, expected, rtol=1e-5, atol=1e-5)
    (expected * weights).sum().backward()
    torch.testing.assert_close(got_x, x.grad, rtol=1e-4, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4,
                                   atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="rows need out_type='raw'"):
        tiny(out_type='featmap')(x, rows=rows)
