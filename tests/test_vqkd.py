"""VQ-KD: forward/backward, teachers, the MMPretrain peer check, configs,
and codebook usage logging through a real Runner."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from beit_plugin.compat import safe_torch_load
from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.engine.hooks import CodebookUsageHook
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers import (BackboneTeacher, HOGTeacher,
                                           VQKDTokenizer, vqkd_from_mmpretrain)
from beit_plugin.models.tokenizers import quantizer as quantizer_module
from beit_plugin.registry import MODELS
from helpers import ROOT, TINY_ARCH, load_tool, randomise


def tiny_vqkd(**kwargs) -> VQKDTokenizer:
    cfg = dict(
        encoder=dict(arch=TINY_ARCH, img_size=32, patch_size=8),
        decoder=dict(arch=dict(TINY_ARCH, num_layers=1)),
        teacher=dict(type='HOGTeacher'),
        num_embed=16)
    cfg.update(kwargs)
    return VQKDTokenizer(**cfg)


def test_forward_backward_and_target_generator_interface():
    model = tiny_vqkd().train()
    x = torch.randn(2, 3, 32, 32)
    losses = model(x, mode='loss')
    assert set(losses) == {'loss_rec', 'loss_quant'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # the straight-through estimator carries the decoder's gradient back
    for param in (model.encoder.patch_embed.proj.weight,
                  model.encode_task_layer[0].weight,
                  model.decoder.patch_embed.proj.weight,
                  model.decode_task_layer[2].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.quantize.embedding.initted.item() == 1

    ids = model(x, mode='tensor')
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < model.vocab_size == 16
    assert model.downsample == 8
    assert model.input_norm == dict(mean=(127.5, ) * 3, std=(127.5, ) * 3)


def test_get_codebook_indices_never_changes_the_tokenizer():
    model = tiny_vqkd(kmeans_init=False).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.get_codebook_indices(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_freeze_makes_a_frozen_eval_target_generator():
    model = tiny_vqkd(frozen=True)
    assert model.frozen and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.encoder.training


def test_encoder_only_tokenizer_has_no_decoder():
    model = tiny_vqkd(decoder=None, teacher=None)
    assert model.decoder is None and model.teacher is None
    assert model.get_codebook_indices(torch.randn(1, 3, 32, 32)).shape == (1,
                                                                           16)
    with pytest.raises(RuntimeError, match='decoder and a teacher'):
        model.loss(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('vit', [
    dict(use_abs_pos_emb=True, use_rel_pos_bias=False,
         layer_scale_init_value=0.),
    dict(use_abs_pos_emb=False, use_rel_pos_bias=True,
         layer_scale_init_value=0.1),
])
def test_mmpretrain_vqkd_converts_to_identical_token_ids(vit):
    from mmpretrain.models import VQKD
    peer = VQKD(
        encoder_config=dict(
            arch=TINY_ARCH, img_size=32, patch_size=8, out_type='featmap',
            final_norm=True,
            use_shared_rel_pos_bias=False, **vit),
        num_embed=64)
    randomise(peer)
    with torch.no_grad():
        peer.quantize.embedding.weight.copy_(
            F.normalize(torch.randn(64, 32), dim=1))
        peer.quantize.embedding.initted.fill_(1.)
        peer.quantize.cluster_size.copy_(torch.rand(64) * 10)
    peer.eval()

    ours = VQKDTokenizer(
        encoder=dict(arch=TINY_ARCH, img_size=32, patch_size=8, **vit),
        num_embed=64, frozen=True)
    ours.load_state_dict(vqkd_from_mmpretrain(peer.state_dict()), strict=True)
    assert torch.equal(ours.quantize.embedding.cluster_size,
                       peer.quantize.cluster_size)

    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        peer_feats = peer.encoder(x)[0].flatten(2).transpose(1, 2)
        our_feats = ours.encoder(x)[0][:, 1:]
    assert torch.allclose(our_feats, peer_feats, atol=1e-5)
    assert torch.equal(ours.get_codebook_indices(x), peer(x))


def test_hog_teacher_orientations():
    teacher = HOGTeacher(num_bins=9, cells_per_side=2)
    img = torch.zeros(1, 3, 16, 16)
    img[..., 4:, :] = 255.  # a horizontal edge in the top row of patches
    feats = teacher(img, (2, 2))
    assert feats.shape == (1, 4, teacher.out_channels) == (1, 4, 108)
    # vertical gradients: unsigned orientation 90 degrees, the centre of
    # bin 4; the cell histograms are centred, so the other bins are equal
    # and negative
    profile = feats[0, :2].view(2, 3, 9, 2, 2).sum(dim=(1, 3, 4))
    assert (profile[:, 4] > 0).all()
    others = torch.cat([profile[:, :4], profile[:, 5:]], dim=1)
    assert torch.allclose(others, others[:, :1].expand_as(others))
    assert (others < 0).all()
    assert torch.allclose(feats[0, :2].norm(dim=1), torch.ones(2))
    assert torch.count_nonzero(feats[0, 2:]) == 0  # flat patches

    side = torch.zeros(1, 3, 16, 16)
    side[..., :, 4:] = 255.  # a vertical edge: 0 degrees, bins 8 and 0
    hist = teacher(side, (2, 2))[0, 0].view(3, 9, 2, 2).sum(dim=(0, 2, 3))
    assert torch.allclose(hist[0], hist[8]) and hist[0] > 0
    assert torch.allclose(hist[1:8], hist[1].expand(7)) and hist[1] < 0


def test_hog_teacher_colour_part_hand_computed():
    """Colour levels 0, 1/3, 2/3, 1 (4 bins): a pixel of 0.5 splits half and
    half between levels 1 and 2; the two unit parts are weighted so that
    the whole descriptor has unit norm, and a flat patch keeps its colour
    part (norm sqrt(colour_weight))."""
    teacher = HOGTeacher(num_bins=9, cells_per_side=2, colour_bins=4,
                         colour_weight=0.36)
    assert teacher.out_channels == 108 + 12
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0] = 0.5 * 255  # flat: red 0.5, green 0, blue 1
    img[:, 2] = 255.
    feats = teacher(img, (2, 2))[0]
    assert torch.count_nonzero(feats[:, :108]) == 0
    assert torch.allclose(feats.norm(dim=1), torch.full((4, ), 0.6))
    flat = torch.zeros(3, 4)
    flat[0, 1:3] = 0.5
    flat[1, 0] = flat[2, 3] = 1.
    flat = torch.nn.functional.normalize(flat.flatten(), dim=0)
    assert torch.allclose(feats[:, 108:] / 0.6, flat.expand(4, 12),
                          atol=1e-6)
    img[:, 2, :4] = 0.  # blue 1 in half of the top patches only: an edge
    feats = teacher(img, (2, 2))[0]
    assert torch.allclose(feats[:2].norm(dim=1), torch.ones(2))
    half = torch.zeros(3, 4)
    half[0, 1:3] = 0.5
    half[1, 0] = 1.
    half[2, 0] = half[2, 3] = 0.5
    half = torch.nn.functional.normalize(half.flatten(), dim=0)
    assert torch.allclose(feats[:2, 108:] / 0.6, half.expand(2, 12),
                          atol=1e-6)
    with pytest.raises(ValueError, match='colour_bins'):
        HOGTeacher(colour_bins=1)
    with pytest.raises(ValueError, match='colour_weight'):
        HOGTeacher(colour_bins=4, colour_weight=1.5)


def test_hog_teacher_sees_pixels_through_the_input_norm():
    teacher = HOGTeacher(input_norm=dict(mean=(127.5, ) * 3,
                                         std=(127.5, ) * 3))
    pixels = torch.rand(1, 3, 16, 16) * 255
    raw = HOGTeacher()(pixels, (2, 2))
    assert torch.allclose(teacher((pixels - 127.5) / 127.5, (2, 2)), raw,
                          atol=1e-5)


def test_backbone_teacher_loads_timm_vit_weights_exactly(tmp_path):
    """The DINO config's path: a timm / DINO ViT checkpoint in our BEiT."""
    from timm.models.vision_transformer import VisionTransformer
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        mlp_ratio=2., qkv_bias=True, num_classes=0)
    randomise(vit)
    torch.save(vit.state_dict(), tmp_path / 'dino.pth')
    teacher = BackboneTeacher(
        backbone=dict(
            type='beit_plugin.BEiT', arch=TINY_ARCH, img_size=32,
            patch_size=8, use_abs_pos_emb=True,
            use_shared_rel_pos_bias=False, layer_scale_init_value=0.),
        out_channels=32,
        checkpoint=str(tmp_path / 'dino.pth'),
        split_qkv_bias=True,
        input_size=None,
        mean=(0., ) * 3,
        std=(1., ) * 3)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit.eval().forward_features(x)[:, 1:]
    assert torch.allclose(teacher(x, (4, 4)), expected, atol=1e-5)
    # another grid: bilinear resize of the feature map
    assert teacher(x, (2, 2)).shape == (2, 4, 32)


def test_teacher_is_left_out_of_tokenizer_checkpoints(tmp_path):
    backbone = BEiT(arch=TINY_ARCH, img_size=32, patch_size=8)
    torch.save(backbone.state_dict(), tmp_path / 'teacher.pth')
    teacher = dict(
        type='BackboneTeacher',
        backbone=dict(type='beit_plugin.BEiT', arch=TINY_ARCH, img_size=32,
                      patch_size=8),
        out_channels=32, checkpoint=str(tmp_path / 'teacher.pth'),
        input_size=32)
    model = tiny_vqkd(teacher=teacher)
    state = model.state_dict()
    assert not [k for k in state if k.startswith('teacher.')]
    reloaded = tiny_vqkd(teacher=teacher)
    reloaded.load_state_dict(state, strict=True)
    assert torch.equal(reloaded.teacher.backbone.cls_token,
                       backbone.cls_token)
    losses = reloaded.train().loss(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(losses['loss_rec'])


def test_clip_config_teacher_builds_from_a_converted_checkpoint(tmp_path):
    """The CLIP recipe's teacher (MMPretrain ViT + projection), tiny."""
    cfg = Config.fromfile(
        str(ROOT / 'configs/vqkd/vqkd_vit-base-p16_clip-teacher_in1k.py'))
    teacher_cfg = cfg.model.teacher
    teacher_cfg.backbone.update(arch=TINY_ARCH, img_size=32, patch_size=8)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        backbone = MODELS.build(teacher_cfg.backbone)  # QuickGELU: mmpretrain
    randomise(backbone)
    proj = torch.randn(32, 16)
    state = {f'visual.{k}': v for k, v in backbone.state_dict().items()}
    state['visual_proj.proj'] = proj
    state['transformer.text_weight'] = torch.zeros(1)  # other CLIP parts
    torch.save(state, tmp_path / 'clip.pth')
    teacher_cfg.update(checkpoint=str(tmp_path / 'clip.pth'), input_size=32,
                       out_channels=16)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        teacher = MODELS.build(teacher_cfg)
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        tokens = backbone(teacher.normalise(x))[0]
        expected = tokens[:, 1:] @ proj
    assert torch.allclose(teacher(x, (4, 4)), expected, atol=1e-5)


def test_dino_config_swaps_only_the_teacher():
    cfg = Config.fromfile(
        str(ROOT / 'configs/vqkd/vqkd_vit-base-p16_dino-teacher_in1k.py'))
    teacher = cfg.model.teacher
    assert teacher.backbone.type == 'beit_plugin.BEiT'
    assert teacher.split_qkv_bias and teacher.out_channels == 768
    assert 'projection_key' not in teacher  # nothing left of CLIP's
    assert cfg.model.num_embed == 8192 and cfg.model.embed_dims == 32
    assert cfg.model.decoder.arch.num_layers == 3


def _tiny_demo_model_cfg(config: str) -> dict:
    cfg = Config.fromfile(str(ROOT / config))
    assert cfg.default_scope == 'beit_plugin'
    assert 'beit_plugin' in cfg.custom_imports.imports
    model = cfg.model
    model.encoder.update(arch=TINY_ARCH, img_size=32)
    model.decoder.update(arch=dict(TINY_ARCH, num_layers=1))
    model.num_embed = 32
    return model


def test_demo_config_trains_two_steps():
    model = MODELS.build(_tiny_demo_model_cfg('configs/vqkd/vqkd_demo_hog.py'))
    assert isinstance(model.teacher, HOGTeacher) and model.downsample == 8
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))

    def batch():  # as the dataloader gives it: uint8 BGR images
        return dict(
            inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
                    for _ in range(4)],
            data_samples=None)

    model.train()
    model.train_step(batch(), optim)  # k-means init, first EMA step
    codebook = model.quantize.embedding.weight.clone()
    sizes = model.quantize.embedding.cluster_size.clone()
    log_vars = model.train_step(batch(), optim)
    assert math.isfinite(log_vars['loss'].item())
    assert not torch.equal(model.quantize.embedding.weight, codebook)
    assert not torch.equal(model.quantize.embedding.cluster_size, sizes)


def test_codebook_usage_hook_window_arithmetic():
    module = torch.nn.Module()
    module.last_counts = torch.zeros(4)
    hub = MessageHub.get_instance('test-codebook-usage')
    runner = SimpleNamespace(model=torch.nn.Sequential(module),
                             message_hub=hub)
    hook = CodebookUsageHook(window=2)
    hook.before_train(runner)

    def step(counts):
        module.last_counts = torch.tensor(counts)
        hook.after_train_iter(runner, 0)
        return (hub.get_scalar('train/codebook/usage').current(),
                hub.get_scalar('train/codebook/perplexity').current())

    assert step([4., 0., 0., 0.]) == (0.25, 1.0)
    usage, perplexity = step([0., 4., 0., 0.])  # window: codes 0 and 1
    assert usage == 0.5 and perplexity == pytest.approx(2.0)
    usage, perplexity = step([0., 0., 2., 2.])  # code 0 left the window
    assert usage == 0.75
    assert perplexity == pytest.approx(math.exp(-sum(
        p * math.log(p) for p in (0.5, 0.25, 0.25))))


def _write_images(folder: Path, num: int = 8) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(num):
        cv2.imwrite(str(folder / f'{i}.png'),
                    rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _runner(work_dir: Path, data: Path, max_iters: int,
            resume: bool = False) -> Runner:
    return Runner(
        model=dict(
            type='VQKDTokenizer',
            encoder=dict(arch=TINY_ARCH, img_size=32, patch_size=8),
            decoder=dict(arch=dict(TINY_ARCH, num_layers=1)),
            teacher=dict(type='HOGTeacher'),
            num_embed=16),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=4,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(
                type='CustomDataset', data_root=str(data), with_label=False,
                pipeline=[dict(type='LoadImageFromFile'),
                          dict(type='PackInputs')])),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=3,
                            by_epoch=False)),
        custom_hooks=[dict(type='CodebookUsageHook', window=2)],
        log_processor=dict(by_epoch=False),
        visualizer=dict(type='Visualizer',
                        vis_backends=[dict(type='LocalVisBackend')]),
        default_scope='beit_plugin',
        resume=resume)


@pytest.mark.slow
def test_runner_logs_usage_and_resume_keeps_the_kmeans_codebook(
        tmp_path, monkeypatch):
    _write_images(tmp_path / 'images')
    _runner(tmp_path / 'work', tmp_path / 'images', max_iters=3).train()
    scalars = [json.loads(line) for line in
               next((tmp_path / 'work').glob('*/vis_data/scalars.json'))
               .read_text().splitlines()]
    assert len(scalars) == 3
    assert all(0 < s['codebook/usage'] <= 1 and s['codebook/perplexity'] >= 1
               for s in scalars)
    state = safe_torch_load(tmp_path / 'work' / 'iter_3.pth')['state_dict']
    assert state['quantize.embedding.initted'].item() == 1
    assert not [k for k in state if k.startswith('teacher.')]

    calls = []
    monkeypatch.setattr(quantizer_module, 'kmeans_cosine',
                        lambda *a, **k: calls.append(1))
    resumed = _runner(tmp_path / 'work', tmp_path / 'images', max_iters=4,
                      resume=True)
    resumed.train()
    assert calls == []  # the codebook came from the checkpoint
    assert resumed.iter == 4


def test_export_tokenizer_keeps_the_model_weights(tmp_path):
    """tools/export_tokenizer.py: runner checkpoint -> weights-only file."""
    export = load_tool('export_tokenizer')
    model = VQKDTokenizer(
        encoder=dict(arch=TINY_ARCH, img_size=32, patch_size=8),
        decoder=dict(arch=TINY_ARCH), target_dims=12, num_embed=16)
    state = model.state_dict()
    src = tmp_path / 'iter_10.pth'
    torch.save(dict(meta=dict(iter=10), state_dict=state,
                    optimizer=dict(state={}, param_groups=[])), src)
    for encoder_only in (False, True):
        dst = tmp_path / f'tok_{encoder_only}.pth'
        export.main([str(src), str(dst)] +
                    (['--encoder-only'] if encoder_only else []))
        saved = torch.load(dst, weights_only=True)
        assert list(saved) == ['state_dict']
        kept = {k for k in state if not encoder_only or
                not k.startswith(('decoder.', 'decode_task_layer.'))}
        assert set(saved['state_dict']) == kept
        assert any(k.startswith('decoder.') for k in state)
        for key in kept:
            assert torch.equal(saved['state_dict'][key], state[key])
    target = VQKDTokenizer(
        encoder=dict(arch=TINY_ARCH, img_size=32, patch_size=8),
        num_embed=16)
    target.load_state_dict(
        torch.load(tmp_path / 'tok_True.pth',
                   weights_only=True)['state_dict'])
    with pytest.raises(KeyError, match='iter_10.pth.*state_dict'):
        export.tokenizer_state_dict({'meta': {}}, source=str(src))


def test_shipped_demo_tokenizer_loads_and_uses_its_codebook(tmp_path):
    """checkpoints/vqkd_demo_hog.pth, the embedded default's targets: loads
    through configs/beit_pretrain.py and spreads freshly generated demo
    images over most of its 512 codes (a collapsed codebook fails)."""
    root = Path(__file__).resolve().parents[1]
    cfg = Config.fromfile(root / 'configs' / 'beit_pretrain.py')
    tok_cfg = cfg.model.target_generator
    tokenizer = MODELS.build(tok_cfg)
    tokenizer.init_weights()
    saved = torch.load(tok_cfg.init_cfg.checkpoint, weights_only=True)
    assert tokenizer.state_dict().keys() == saved['state_dict'].keys()
    for key, value in saved['state_dict'].items():
        assert torch.equal(tokenizer.state_dict()[key], value), key
    data = make_demo_data(tmp_path, seed=7, cls_train=4, cls_val=160,
                          seg_train=1, seg_val=1) / 'imagenet' / 'val'
    images = np.stack([cv2.imread(str(f))[..., ::-1]
                       for f in sorted(data.glob('*/*.JPEG'))])
    inputs = (torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float()
              - 127.5) / 127.5
    with torch.no_grad():
        ids = tokenizer.get_codebook_indices(inputs)
    assert ids.shape == (160, 64)
    used = torch.bincount(ids.flatten(), minlength=512).gt(0).float().mean()
    assert used > 0.9, f'only {used:.1%} of the codes used'


@pytest.mark.parametrize('config', ['vqkd_demo_hog.py',
                                    'vqkd_vit-base-p16_clip-teacher_in1k.py'])
def test_vqkd_recipe_decays_what_the_official_recipe_decays(config):
    """beit2 ``optim_factory.get_parameter_groups`` with the VQ-KD model's
    ``no_weight_decay()``: no decay for 1-d parameters, ``.bias`` names and
    the token / position embeddings of encoder and decoder."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(ROOT / 'configs' / 'vqkd' / config)
    model = tiny_vqkd()
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    decay_of = {id(p): group['weight_decay']
                for group in wrapper.optimizer.param_groups
                for p in group['params']}
    skip = {'encoder.cls_token', 'encoder.pos_embed', 'decoder.cls_token',
            'decoder.pos_embed'}
    names = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        official = 0. if (param.ndim == 1 or name.endswith('.bias')
                          or name in skip) else base_wd
        assert decay_of[id(param)] == official, name
        names.append(name)
    assert any(n.endswith('q_bias') for n in names)
    assert any(n.endswith('pos_embed') for n in names)
