"""BEiT v1 tokenizers: the trainable dVAE, the DALL-E encoder and the
reconstruction visualisation."""
import math
import textwrap

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from beit_plugin.models.tokenizers import (DALLEEncoder, DiscreteVAE,
                                           logit_laplace_norm)
from beit_plugin.registry import MODELS
from helpers import ROOT, load_tool


def tiny_dvae(**kwargs) -> DiscreteVAE:
    cfg = dict(num_tokens=32, codebook_dim=16, num_layers=2, hidden_dims=16)
    cfg.update(kwargs)
    return DiscreteVAE(**cfg)


def test_forward_backward_and_target_generator_interface():
    model = tiny_dvae(kl_div_loss_weight=0.1).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = model(x, mode='loss')
    assert set(losses) == {'loss_recon', 'loss_kl', 'temperature'}
    loss = losses['loss_recon'] + losses['loss_kl']
    assert torch.isfinite(loss)
    loss.backward()
    for param in (model.encoder[0][0].weight, model.codebook.weight,
                  model.decoder[-1].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.last_counts.sum() == 2 * 4 * 4

    ids = model(x, mode='tensor')
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert model.downsample == 4 and model.vocab_size == 32
    assert model.reconstruct(x).shape == x.shape


def test_temperature_anneals_per_step_and_resumes():
    model = tiny_dvae(temperature=1.0, min_temperature=0.5,
                      anneal_rate=0.1).train()
    x = torch.randn(1, 3, 8, 8)
    used = [model.loss(x)['temperature'].item() for _ in range(10)]
    expected = [max(math.exp(-0.1 * step), 0.5) for step in range(10)]
    assert used == pytest.approx(expected)
    assert used[-1] == 0.5  # clamped
    resumed = tiny_dvae(temperature=1.0, min_temperature=0.5,
                        anneal_rate=0.1)
    resumed.load_state_dict(model.state_dict())
    assert resumed.temperature == pytest.approx(model.temperature)
    assert int(resumed.num_updates) == 10


def test_straight_through_samples_are_one_hot():
    model = tiny_dvae(straight_through=True).train()
    seen = []
    decode = model.decode
    model.decode = lambda one_hot: seen.append(one_hot) or decode(one_hot)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    model.loss(x)['loss_recon'].backward()
    one_hot = seen[0]
    assert torch.equal(one_hot.sum(1), torch.ones_like(one_hot.sum(1)))
    assert set(one_hot.unique().tolist()) == {0., 1.}
    assert x.grad.abs().sum() > 0  # soft gradient through the samples


def test_kl_to_uniform_is_zero_for_uniform_logits_and_positive_otherwise():
    model = tiny_dvae(kl_div_loss_weight=1.0).train()
    with torch.no_grad():
        last = model.encoder[-1]
        last.weight.zero_()
        last.bias.zero_()
    x = torch.randn(2, 3, 8, 8)
    assert model.loss(x)['loss_kl'].abs() < 1e-6
    with torch.no_grad():
        last.bias[0] = 5.
    logits = torch.zeros(32)
    logits[0] = 5.
    q = logits.softmax(0)
    positions = 2 * 2 * 2  # 2 images of 2 x 2 tokens, each the same q
    expected = positions * (q * (q.log() + math.log(32))).sum()
    assert model.loss(x)['loss_kl'].item() == pytest.approx(
        expected.item(), rel=1e-5)


def test_kl_term_is_the_official_sum_over_batch_positions_and_codes():
    """KL(q || uniform) = sum over images, positions and codes of
    q log(q K), as unilm's beit/modeling_discrete_vae.py DiscreteVAE.forward
    computes it: F.kl_div(..., 'batchmean') divides by the first dimension
    of its one-element input, log_uniform, i.e. by 1, not by the batch."""
    num_tokens, weight = 32, 0.5
    model = tiny_dvae(num_tokens=num_tokens,
                      kl_div_loss_weight=weight).train()
    x = torch.randn(3, 3, 8, 8)  # 3 images, 2 x 2 tokens each
    with torch.no_grad():
        q = model.encoder(x).softmax(1)  # (B, K, H, W)
        hand = sum(q[b, k, i, j].item() * math.log(q[b, k, i, j].item()
                                                   * num_tokens)
                   for b in range(3) for k in range(num_tokens)
                   for i in range(2) for j in range(2))
        # the official expression, verbatim but for the rearrange
        log_qy = torch.log(q.flatten(2).transpose(1, 2) + 1e-10)
        log_uniform = torch.log(torch.tensor([1. / num_tokens]))
        official = F.kl_div(log_uniform, log_qy, None, None, 'batchmean',
                            log_target=True)
        loss_kl = model.loss(x)['loss_kl'].item()
    assert official.item() == pytest.approx(hand, rel=1e-4)
    assert loss_kl == pytest.approx(weight * hand, rel=1e-4)


def test_dalle_encoder_loads_the_published_key_layout(tmp_path):
    """A random DALL-E encoder in OpenAI's layout (MMPretrain's copy of
    OpenAI's module, ``.w`` / ``.b`` parameters) gives the same logits and
    ids in ours."""
    from mmpretrain.models.selfsup.cae import DALLEEncoder as Peer
    peer = Peer(n_hid=8, vocab_size=64)
    with torch.no_grad():
        for param in peer.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    state = peer.state_dict()
    assert 'blocks.group_1.block_1.res_path.conv_1.w' in state
    assert 'blocks.group_2.block_1.id_path.w' in state
    assert 'blocks.output.conv.b' in state

    ours = DALLEEncoder(n_hid=8, vocab_size=64)
    ours.load_state_dict(state, strict=True)
    assert ours.frozen and not ours.training and ours.downsample == 8
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = peer(x)
    assert torch.allclose(ours.get_logits(x), expected, atol=1e-5)
    assert torch.equal(ours.get_codebook_indices(x),
                       expected.argmax(1).flatten(1))

    # the documented route: a Pretrained init_cfg on the converted file
    torch.save(state, tmp_path / 'dalle_encoder.pth')
    from_cfg = MODELS.build(dict(
        type='DALLEEncoder', n_hid=8, vocab_size=64,
        init_cfg=dict(type='Pretrained',
                      checkpoint=str(tmp_path / 'dalle_encoder.pth'))))
    from_cfg.init_weights()
    assert torch.equal(from_cfg.get_codebook_indices(x),
                       ours.get_codebook_indices(x))


def test_dalle_input_norm_is_the_logit_laplace_map():
    pixels = torch.arange(256.)
    norm = DALLEEncoder(n_hid=4, vocab_size=8).input_norm
    assert norm == logit_laplace_norm()
    mapped = (pixels - norm['mean'][0]) / norm['std'][0]
    assert torch.allclose(mapped, 0.8 * pixels / 255 + 0.1)


def test_tokenizers_swap_by_one_dict():
    """The same calls work on either tokenizer built from its dict."""
    for cfg, size in ((dict(type='DiscreteVAE', num_tokens=16,
                            codebook_dim=8, num_layers=3, hidden_dims=8,
                            frozen=True), 64),
                      (dict(type='DALLEEncoder', n_hid=4, vocab_size=16),
                       64),
                      (dict(type='VQKDTokenizer',
                            encoder=dict(arch=dict(
                                embed_dims=16, num_layers=1, num_heads=2,
                                feedforward_channels=32),
                                img_size=64, patch_size=8),
                            num_embed=16, frozen=True), 64)):
        tokenizer = MODELS.build(cfg)
        assert tokenizer.frozen and not tokenizer.training
        assert tokenizer.downsample == 8 and tokenizer.vocab_size == 16
        assert set(tokenizer.input_norm) == {'mean', 'std'}
        ids = tokenizer.get_codebook_indices(torch.randn(2, 3, size, size))
        assert ids.shape == (2, 64) and ids.dtype == torch.long


def _tiny_demo_cfg() -> Config:
    cfg = Config.fromfile(str(ROOT / 'configs/dvae/dvae_demo.py'))
    assert cfg.default_scope == 'beit_plugin'
    cfg.model.update(num_tokens=16, codebook_dim=8, hidden_dims=8)
    return cfg


def test_demo_config_trains_two_steps():
    model = MODELS.build(_tiny_demo_cfg().model)
    assert model.downsample == 8
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    batch = dict(
        inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
                for _ in range(4)],
        data_samples=None)
    model.train()
    for _ in range(2):
        log_vars = model.train_step(batch, optim)
        assert math.isfinite(log_vars['loss'].item())
    assert int(model.num_updates) == 2
    assert model.temperature < 1.0


def test_visualize_dvae_writes_inputs_and_reconstructions(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f'{i}.png'),
                    rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    config = tmp_path / 'dvae.py'
    config.write_text(textwrap.dedent(f"""
        custom_imports = dict(imports=['beit_plugin'],
                              allow_failed_imports=False)
        default_scope = 'beit_plugin'
        model = dict(type='DiscreteVAE', num_tokens=16, codebook_dim=8,
                     num_layers=2, hidden_dims=8)
        train_dataloader = dict(dataset=dict(
            type='CustomDataset', data_root={str(images)!r}, with_label=False,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='RandomCrop', crop_size=32),
                      dict(type='PackInputs')]))
    """))
    model = tiny_dvae(num_tokens=16, codebook_dim=8, hidden_dims=8)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'ckpt.pth')

    tool = load_tool('visualize_dvae')
    out = tmp_path / 'recon.png'
    image = tool.main([str(config), str(tmp_path / 'ckpt.pth'), '--num', '3',
                       '--out', str(out)])
    written = cv2.imread(str(out))
    assert written.shape == image.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    assert (written[2:34, 2:34] != 255).any()  # first input
    assert (written[36:68, 2:34] != 255).any()  # its reconstruction
