"""iBOT-style pretraining (an online tokenizer: the EMA teacher): the
teacher's update, the centres, the losses against the official formulas
written out independently, the projection head, the per-view masks, the
demo config through the Runner with an exact resume, and the checkpoint
loading into the fine-tuning and linear-probe demos."""
import copy
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.structures import DataSample

from beit_plugin.compat import safe_torch_load
from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.datasets.transforms import MultiViewBlockwiseMaskGenerator
from beit_plugin.engine.hooks import EMATeacherHook
from beit_plugin.engine.hooks.ema_teacher import cosine_momentum
from beit_plugin.models.heads import iBOTLoss, iBOTProjectionHead
from beit_plugin.models.heads.ibot_loss import warmup_value
from beit_plugin.registry import MODELS
from helpers import CLS_IMG as IMG
from helpers import CLS_PATCH as PATCH
from helpers import ROOT, TINY_ARCH, loss_without_device_syncs, randomise

DEMO = ROOT / 'configs/ibot/ibot_demo_pretrain.py'
FULL = ROOT / 'configs/ibot/ibot_vit-base-p16_8xb128-coslr-400e_in1k.py'
GRID = IMG // PATCH
LOCAL = IMG // 2
DIMS = TINY_ARCH['embed_dims']
K = 64  # prototypes of the tiny head


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


def tiny_config(path: Path = DEMO) -> Config:
    """The demo config with the tiny backbone (32 px, 8 px patches), a
    64-prototype head and 16 px local views."""
    cfg = Config.fromfile(path)
    model = cfg.model
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)
    model.head.update(in_channels=DIMS, out_channels=K, hidden_channels=32,
                      bottleneck_channels=16)
    model.distill_loss.update(out_channels=K, warmup_iters=4)
    model.freeze_last_layer_iters = 1
    views = cfg.train_dataloader.dataset.pipeline[1]
    for pipeline, size in zip(views.transforms, (IMG, IMG, LOCAL)):
        pipeline[0].scale = size
    views.num_views = [1, 1, 2]
    cfg.train_dataloader.dataset.pipeline[2].update(input_size=GRID,
                                                    min_num_patches=2)
    return cfg


def build(cfg: Config = None):
    cfg = cfg or tiny_config()
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    return model


def batch(batch_size: int = 3, locals_: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch_size, 3, IMG, IMG, generator=generator)
              for _ in range(2)]
    inputs += [torch.randn(batch_size, 3, LOCAL, LOCAL, generator=generator)
               for _ in range(locals_)]
    samples = [DataSample().set_mask(
        torch.rand(2, GRID, GRID, generator=generator) < 0.4)
        for _ in range(batch_size)]
    return inputs, samples


# ---------------------------------------------------------------------------
# the teacher
# ---------------------------------------------------------------------------


def test_teacher_starts_as_the_student_and_gets_no_gradient():
    model = build()
    student = dict(model.backbone.named_parameters(prefix='backbone'))
    student.update(model.head.named_parameters(prefix='head'))
    for name, param in model.teacher.named_parameters():
        assert not param.requires_grad, name
        assert torch.equal(param, student[name]), name
    model.train()
    assert not model.teacher.training and model.backbone.training
    model.set_iteration(5)  # past the frozen last layer
    inputs, samples = batch()
    losses = model.loss(inputs, samples)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad


def test_momentum_update_is_the_formula():
    model = build()
    with torch.no_grad():  # a student that moved away from the teacher
        for param in list(model.backbone.parameters()) + list(
                model.head.parameters()):
            param.add_(torch.randn_like(param))
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    student = dict(model.backbone.named_parameters(prefix='backbone'))
    student.update(model.head.named_parameters(prefix='head'))
    m = 0.9
    model.momentum_update(m)
    for name, param in model.teacher.named_parameters():
        expected = m * before[name] + (1 - m) * student[name]
        torch.testing.assert_close(param, expected, rtol=0, atol=1e-6)
        assert not param.requires_grad


def test_momentum_schedule_is_the_official_cosine():
    # utils.cosine_scheduler(0.996, 1, epochs, niter_per_ep)
    base, end, total = 0.996, 1.0, 10
    official = end + 0.5 * (base - end) * (
        1 + np.cos(np.pi * np.arange(total) / total))
    assert [cosine_momentum(base, end, i, total) for i in range(total)] == \
        pytest.approx(official.tolist(), abs=1e-12)


def test_hook_updates_after_each_step_with_the_scheduled_momentum():
    hook = EMATeacherHook(momentum=0.9, end_momentum=1.0)
    calls = []
    model = SimpleNamespace(momentum_update=calls.append,
                            set_iteration=lambda i: calls.append(('it', i)))
    scalars = {}
    runner = SimpleNamespace(
        model=model, iter=3, max_iters=8,
        optim_wrapper=SimpleNamespace(should_update=lambda: True),
        message_hub=SimpleNamespace(update_scalar=scalars.__setitem__))
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0)
    m = 1 - 0.1 * (1 + math.cos(math.pi * 3 / 8)) / 2
    assert calls == [('it', 3), pytest.approx(m)]
    assert scalars['train/teacher_momentum'] == pytest.approx(m)
    # no update in an iteration without an optimizer step (accumulation)
    runner.optim_wrapper.should_update = lambda: False
    hook.after_train_iter(runner, 0)
    assert len(calls) == 2


# ---------------------------------------------------------------------------
# the loss and the centres
# ---------------------------------------------------------------------------


def official_ibot_loss(s_cls, s_patch, s_local, t_cls, t_patch, masks,
                       center, center2, temp, temp2, student_temp=0.1):
    """The official iBOTLoss.forward, written per sample and term."""
    g = 2
    b = len(t_cls) // g
    s_views = list(s_cls.split(b)) + (list(s_local.split(b))
                                      if s_local is not None else [])
    t_views, tp_views = t_cls.split(b), t_patch.split(b)
    sp_views, m_views = s_patch.split(b), masks.split(b)

    def ce(teacher, student):  # sum_k -softmax(t) log_softmax(s)
        p = torch.exp(teacher) / torch.exp(teacher).sum(-1, keepdim=True)
        log_q = student - torch.logsumexp(student, -1, keepdim=True)
        return -(p * log_q).sum(-1)

    cls_terms, patch_terms = [], []
    for q in range(g):
        for v in range(len(s_views)):
            if v == q:
                per_sample = []
                for i in range(b):
                    total = 0.
                    for n in range(masks.shape[1]):
                        if m_views[v][i, n]:
                            total = total + ce(
                                (tp_views[q][i, n] - center2[0, 0]) / temp2,
                                sp_views[v][i, n] / student_temp)
                    per_sample.append(total / max(
                        1., float(m_views[v][i].sum())))
                patch_terms.append(sum(per_sample) / b)
            else:
                cls_terms.append(sum(
                    ce((t_views[q][i] - center[0]) / temp,
                       s_views[v][i] / student_temp)
                    for i in range(b)) / b)
    return sum(cls_terms) / len(cls_terms), sum(patch_terms) / len(
        patch_terms)


@pytest.mark.parametrize('locals_', [0, 2])
def test_losses_equal_the_official_formula(locals_):
    torch.manual_seed(3)
    b, n, k = 3, 5, 7
    loss = iBOTLoss(k, warmup_teacher_temp=0.04, teacher_temp=0.07,
                    warmup_teacher_patch_temp=0.05, teacher_patch_temp=0.08,
                    warmup_iters=5)
    loss.center.normal_()
    loss.center2.normal_()
    center, center2 = loss.center.clone(), loss.center2.clone()
    s_cls, t_cls = torch.randn(2 * b, k), torch.randn(2 * b, k)
    s_patch, t_patch = torch.randn(2 * b, n, k), torch.randn(2 * b, n, k)
    s_local = torch.randn(locals_ * b, k) if locals_ else None
    masks = torch.rand(2 * b, n) < 0.5
    masks[0] = False  # a sample without masked patches counts 0
    iteration = 2
    temp, temp2 = 0.04 + 0.03 * 2 / 4, 0.05 + 0.03 * 2 / 4
    result = loss(s_cls, s_patch, t_cls, t_patch, masks, iteration,
                  s_local)
    expected_cls, expected_patch = official_ibot_loss(
        s_cls, s_patch, s_local, t_cls, t_patch, masks, center, center2,
        temp, temp2)
    torch.testing.assert_close(result['loss_cls'], expected_cls)
    torch.testing.assert_close(result['loss_patch'], expected_patch)
    targets = torch.softmax((t_cls - center) / temp, -1)
    torch.testing.assert_close(result['teacher_entropy'],
                               -(targets * targets.log()).sum(-1).mean())
    assert not result['teacher_entropy'].requires_grad


def test_centre_update_is_the_formula():
    loss = iBOTLoss(4, center_momentum=0.9, center_momentum2=0.8)
    loss.center.fill_(1.)
    loss.center2.fill_(-1.)
    t_cls, t_patch = torch.randn(6, 4), torch.randn(6, 5, 4)
    loss.update_center(t_cls, t_patch)
    torch.testing.assert_close(
        loss.center, 0.9 * 1. + 0.1 * t_cls.sum(0, keepdim=True) / 6)
    torch.testing.assert_close(
        loss.center2,
        0.8 * -1. + 0.2 * t_patch.mean(1).sum(0).view(1, 1, 4) / 6)


def test_teacher_temperature_warms_up_as_the_official_linspace():
    official = np.concatenate([np.linspace(0.04, 0.07, 30),
                               np.full(10, 0.07)])
    assert [warmup_value(0.04, 0.07, 30, i) for i in range(40)] == \
        pytest.approx(official.tolist(), abs=1e-12)
    assert warmup_value(0.04, 0.07, 0, 0) == 0.07


@pytest.mark.parametrize('last', [True, False])
def test_student_last_block_and_head_on_masked_rows_equal_the_full_model(
        last):
    """With the last block's output, the student's last block and head run
    on the CLS and masked rows alone (1 + the batch's largest masked count
    per global view); losses and every gradient equal the full student's
    scored at the masked patches, computed by hand. Another block's output
    runs in full."""
    cfg = tiny_config()
    cfg.model.backbone.drop_path_rate = 0.
    if not last:
        cfg.model.backbone.update(out_indices=-2)
    model = build(cfg)
    model.train()
    inputs, samples = batch()
    with torch.no_grad():  # random weights everywhere, not the inits
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)

    mask = model._masks(samples, torch.device('cpu'))
    images = torch.cat(inputs[:2])
    freeze = 0 < model.freeze_last_layer_iters
    with torch.no_grad():
        t_cls, t_patch = model.teacher.head(model.teacher.backbone(images)[-1])
    s_cls, s_patch = model.head(model.backbone(images, mask)[-1], freeze)
    local_cls = model.head(
        model.backbone(torch.cat(inputs[2:]))[-1][:, 0], freeze)
    expected = model.distill_loss(s_cls, s_patch, t_cls, t_patch,
                                  mask.flatten(1), 0, local_cls,
                                  update_center=False)
    model.zero_grad()
    (expected['loss_cls'] + expected['loss_patch']).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()
            if p.grad is not None}

    rows_seen = []
    model.head.mlp.register_forward_hook(
        lambda m, args, out: rows_seen.append(args[0].shape[1])
        if args[0].dim() == 3 else None)
    model.zero_grad()
    losses = model.loss(inputs, samples)
    (losses['loss_cls'] + losses['loss_patch']).backward()
    most = int(mask.flatten(1).sum(1).max())
    assert rows_seen == [1 + most if last else 1 + GRID * GRID]
    assert most < GRID * GRID
    for name in ('loss_cls', 'loss_patch'):
        torch.testing.assert_close(losses[name], expected[name])
    assert set(want) == {n for n, p in model.named_parameters()
                         if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, want[name], rtol=1e-4,
                                       atol=1e-6, msg=name)


def test_model_loss_updates_the_centres_only_in_training():
    model = build()
    inputs, samples = batch()
    model.eval()
    model.loss(inputs, samples)
    assert not model.distill_loss.center.any()
    model.train()
    model.loss(inputs, samples)
    assert model.distill_loss.center.any() and model.distill_loss.center2.any()


# ---------------------------------------------------------------------------
# the head, the masks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('shared', [True, False])
def test_projection_head(shared):
    head = iBOTProjectionHead(DIMS, 10, patch_out_channels=6,
                              shared_head=shared, hidden_channels=16,
                              bottleneck_channels=8)
    cls, patch = head(torch.randn(2, 5, DIMS))
    assert cls.shape == (2, 10)
    assert patch.shape == (2, 4, 10 if shared else 6)
    assert head(torch.randn(3, DIMS)).shape == (3, 10)
    weight = head.last_layer.weight()
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(10))
    assert not head.last_layer.weight_g.requires_grad
    # the official nn.utils.weight_norm layer computes the same
    official = torch.nn.utils.weight_norm(
        torch.nn.Linear(8, 10, bias=False))
    with torch.no_grad():
        official.weight_v.copy_(head.last_layer.weight_v)
        official.weight_g.fill_(1.)
    x = torch.randn(4, 8)
    torch.testing.assert_close(head.last_layer(x), official(x))


def test_frozen_last_layer_gets_no_gradient():
    head = iBOTProjectionHead(DIMS, 10, hidden_channels=16,
                              bottleneck_channels=8, norm_last_layer=False)
    cls, patch = head(torch.randn(2, 5, DIMS), freeze_last_layer=True)
    (cls.sum() + patch.sum()).backward()
    assert head.last_layer.weight_v.grad is None
    assert head.last_layer.weight_g.grad is None
    assert head.mlp[0].weight.grad is not None


def test_one_mask_per_global_view():
    transform = MultiViewBlockwiseMaskGenerator(14, num_views=2,
                                                mask_ratio=(0.1, 0.5),
                                                mask_prob=0.5)
    assert transform.min_num_patches == 16  # official (14 // 3) ** 2
    np.random.seed(0)
    masks = [transform({})['mask'] for _ in range(400)]
    assert all(m.shape == (2, 14, 14) and m.dtype == bool for m in masks)
    counts = np.array([m.reshape(2, -1).sum(1) for m in masks]).ravel()
    masked = counts[counts > 0]
    assert 0.4 < len(masked) / len(counts) < 0.6
    assert masked.max() <= round(0.5 * 196)
    assert masked.mean() / 196 == pytest.approx(0.3, abs=0.05)
    np.random.seed(0)
    assert all(np.array_equal(m, transform({})['mask']) for m in masks[:5])


def test_masks_of_one_view_are_refused_with_advice():
    model = build()
    inputs, _ = batch()
    samples = [DataSample().set_mask(torch.zeros(GRID, GRID, dtype=bool))
               for _ in range(3)]
    with pytest.raises(ValueError, match='one mask per global view'):
        model.loss(inputs, samples)


# ---------------------------------------------------------------------------
# configs, checkpoints, the Runner
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('path', [DEMO, FULL], ids=lambda p: p.name)
def test_configs_build(path):
    cfg = Config.fromfile(path)
    hooks = [h['type'] for h in cfg.custom_hooks]
    assert 'beit_plugin.EMATeacherHook' in hooks
    assert hooks.count('beit_plugin.RNGStateHook') == 1
    assert cfg.randomness.seed is not None
    assert cfg.model.backbone.init_mode == 'modeling_pretrain'
    views = cfg.train_dataloader.dataset.pipeline[1].transforms
    jitters = [t for view in views for step in view
               if step.type == 'RandomApply' for t in step.transforms
               if t.type == 'ColorJitter']
    assert len(jitters) == 3
    for jitter in jitters:  # the official values (beit_plugin.compat
        # makes hue > 0 work on numpy 2)
        assert (jitter.brightness, jitter.contrast, jitter.saturation,
                jitter.hue) == (0.4, 0.4, 0.2, 0.1)
    model = build(tiny_config(path))
    assert model.num_global_views == 2


DOWNSTREAM_DEMOS = ['finetune/beit_demo_finetune.py',
                    'linear_probe/beit_demo_linear.py',
                    'seg/beit_demo_upernet.py']


def save_state(state: Dict[str, torch.Tensor], path: Path) -> Path:
    """``state`` as an MMEngine checkpoint ({'state_dict': ...})."""
    torch.save({'state_dict': state}, path)
    return path


@pytest.fixture(scope='module')
def demo_checkpoints(tmp_path_factory) -> Dict[str, Path]:
    """Checkpoints of the demo-size pretraining models: the iBOT demo's
    (student and teacher randomised apart, every tensor non-zero) and the
    embedded BEiT default's backbone (``backbone.`` keys), the reference
    for what a pretraining checkpoint lacks downstream."""
    tmp = tmp_path_factory.mktemp('ibot_demo')
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        ibot = MODELS.build(Config.fromfile(DEMO).model)
        beit = MODELS.build(
            Config.fromfile(ROOT / 'configs/beit_pretrain.py').model.backbone)
    randomise(ibot.backbone)
    randomise(ibot.teacher)
    randomise(beit)
    return {
        'ibot': save_state(ibot.state_dict(), tmp / 'ibot.pth'),
        'beit': save_state({f'backbone.{k}': v
                            for k, v in beit.state_dict().items()},
                           tmp / 'beit.pth')}


def downstream_backbone(job: str, checkpoint: Path, prefix: str):
    """The backbone of a downstream demo config, initialised from
    ``checkpoint`` through its ``init_cfg``."""
    cfg = Config.fromfile(ROOT / 'configs' / job)
    cfg.model.backbone.init_cfg.update(checkpoint=str(checkpoint),
                                       prefix=prefix)
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    return backbone


def state_under(path: Path, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in
            safe_torch_load(path)['state_dict'].items()
            if k.startswith(prefix)}


def not_from_file(backbone, state: Dict[str, torch.Tensor]) -> set:
    """Backbone keys a plain non-strict load of ``state`` leaves missing."""
    fresh = copy.deepcopy(backbone)
    missing, _ = fresh.load_state_dict(dict(state), strict=False)
    return set(missing)


@pytest.mark.parametrize('job', DOWNSTREAM_DEMOS)
@pytest.mark.parametrize('prefix', ['backbone.', 'teacher.backbone.'])
def test_downstream_demos_load_the_checkpoint(demo_checkpoints, job, prefix):
    """An iBOT demo checkpoint loads unchanged into the fine-tuning,
    linear-probe and segmentation demos (same backbone size) through their
    init_cfg: the student (``backbone.``, the configs' default) or the
    teacher. Every backbone tensor comes from the file, but those a BEiT
    pretraining checkpoint also lacks (fc_norm; the per-block relative
    position tables, expanded from the shared one)."""
    ibot = demo_checkpoints['ibot']
    backbone = downstream_backbone(job, ibot, prefix)
    state = state_under(ibot, prefix)
    other = state_under(ibot, 'teacher.backbone.' if prefix == 'backbone.'
                        else 'backbone.')
    own = backbone.state_dict()
    loaded = [key for key in own if key in state]
    assert 'cls_token' in loaded and 'blocks.5.mlp.fc2.weight' in loaded
    for key in loaded:
        assert torch.equal(own[key], state[key]), key
        if key in other and not key.endswith('relative_position_index'):
            assert not torch.equal(own[key], other[key]), key
    shared = state['rel_pos_bias.relative_position_bias_table']
    for block in backbone.blocks:
        assert torch.equal(block.attn.relative_position_bias_table, shared)
    beit = demo_checkpoints['beit']
    missing = not_from_file(backbone, state)
    assert missing == not_from_file(
        downstream_backbone(job, beit, 'backbone.'),
        state_under(beit, 'backbone.'))
    assert missing <= {'fc_norm.weight', 'fc_norm.bias'} | {
        f'blocks.{i}.attn.relative_position_bias_table'
        for i in range(len(backbone.blocks))}


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=8, cls_val=8, seg_train=2, seg_val=2)
    return root


def runner_config(work_dir: Path, demo_root: Path, max_iters: int = 4,
                  **kwargs) -> Config:
    cfg = tiny_config()
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader.dataset.data_root = str(demo_root / 'imagenet')
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5,
                                by_epoch=False, begin=0, end=2)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=2,
                                        by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = work_dir.name
    cfg.update(kwargs)
    return cfg


def final_state(runner: Runner) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.slow
def test_runner_trains_and_resumes_exactly(tmp_path, demo_root):
    """4 iterations through the Runner: the teacher moves by EMA, the
    centres and the iteration are in the checkpoints; resuming from
    iteration 2 ends where the uninterrupted run does, teacher, centres
    and schedules included."""
    full = Runner.from_cfg(runner_config(tmp_path / 'full', demo_root))
    full.train()
    expected = final_state(full)
    middle = safe_torch_load(tmp_path / 'full' / 'iter_2.pth')
    state = middle['state_dict']
    assert int(state['iteration']) == 1 and int(expected['iteration']) == 3
    assert state['distill_loss.center'].any()
    # the teacher is no longer the student, and not the initial weights
    assert not torch.equal(state['teacher.backbone.cls_token'],
                           state['backbone.cls_token'])
    (tmp_path / 'resumed').mkdir()
    shutil.copyfile(tmp_path / 'full' / 'iter_2.pth',
                    tmp_path / 'resumed' / 'iter_2.pth')
    resumed = Runner.from_cfg(runner_config(
        tmp_path / 'resumed', demo_root, resume=True,
        load_from=str(tmp_path / 'resumed' / 'iter_2.pth')))
    resumed.train()
    actual = final_state(resumed)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k],
                                                        actual[k])]
    assert not different, different[:10]


def test_v1_demo_config_is_the_default_with_v1_parts():
    """The v1-style demo of the comparison: the embedded default with the
    demo dVAE, no aggregation branch, the final norm and v1 masks."""
    cfg = Config.fromfile(ROOT / 'configs/dvae/beitv1_demo_pretrain_dvae.py')
    assert cfg.model.neck is None
    assert cfg.model.backbone.final_norm and cfg.model.backbone.out_indices \
        == -1
    masks = [t for t in cfg.train_dataloader.dataset.pipeline
             if t.type.endswith('BlockwiseMaskGenerator')]
    assert len(masks) == 1 and masks[0].fixed_count is False
    dvae = Config.fromfile(ROOT / 'configs/dvae/dvae_demo.py').model
    for key in ('num_tokens', 'codebook_dim', 'num_layers', 'hidden_dims'):
        assert cfg.model.target_generator[key] == dvae[key], key
    cfg.model.target_generator.init_cfg = None
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        model = MODELS.build(cfg.model)
    inputs = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)]
    samples = [DataSample().set_mask(torch.rand(8, 8) < 0.4)
               for _ in range(2)]
    assert torch.isfinite(model.loss(inputs, samples)['loss_mim'])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_loss_on_a_gpu_never_synchronises():
    """No operation of the iBOT loss waits for the whole device (CUDA's
    sync debug mode raises on each one)."""
    model = build().cuda().train()
    losses = loss_without_device_syncs(model, *batch())
    assert all(torch.isfinite(v).all() for v in losses.values())
