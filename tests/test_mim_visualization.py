"""MIMVisualizationHook: pictures of masked image modeling during training,
for BEiT v1 (DALL-E tokens; the demo's dVAE tokens), v2 (VQ-KD tokens, patch
aggregation) and the pixel-regression ablation, shrunk to tiny models on
tiny generated data; written as PNGs (LocalVisBackend) and TensorBoard
events (TensorboardVisBackend, the ``tensorboard`` extra).
"""
import copy
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.engine.hooks import MIMVisualizationHook
from beit_plugin.engine.hooks.mim_visualization import PAD, TEXT_HEIGHT
from beit_plugin.models.tokenizers import DiscreteVAE
from beit_plugin.registry import MODELS
from beit_plugin.visualization import token_colours
from helpers import PRETRAIN_GRID as GRID
from helpers import PRETRAIN_IMG as IMG
from helpers import PRETRAIN_PATCH as PATCH
from helpers import PRETRAIN_VOCAB as VOCAB
from helpers import (CONFIGS, TINY_ARCH, few_iterations, load_tool,
                     save_tokenizer)

RECIPES = {
    'v1': CONFIGS / 'beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py',
    'dvae': CONFIGS / 'dvae/beitv1_demo_pretrain_dvae.py',
    'v2': CONFIGS / 'beit_pretrain.py',
    'pixel': CONFIGS / 'ablations/beit_demo_pretrain_pixel.py',
}
BATCH = 4
MASKED = 6  # patches of the 4 x 4 grid
SCALE = 2  # 64 px images -> 128 px panels
CELL = IMG * SCALE
PANELS = {'v1': 4, 'dvae': 4, 'v2': 4, 'pixel': 3}


def picture_shape(kind: str, images: int):
    """``(H, W, 3)`` of the hook's picture of ``images`` images."""
    return (TEXT_HEIGHT + images * (TEXT_HEIGHT + CELL + PAD) + PAD,
            PANELS[kind] * (CELL + PAD) + PAD, 3)


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_train=8, cls_val=1, seg_train=1, seg_val=1)
    return root / 'imagenet'


def tiny_config(kind: str, tmp: Path, data_root: Path) -> Config:
    """The ``kind`` recipe with a tiny model (4 x 4 patches of 16 px on
    64 px images, 16 tokens), tiny data, batches of 4, 4 iterations."""
    cfg = Config.fromfile(RECIPES[kind])
    model = cfg.model
    dims = TINY_ARCH['embed_dims']
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)
    if kind == 'pixel':
        model.head.update(in_channels=dims, out_channels=PATCH * PATCH * 3)
        model.target_generator.patch_size = PATCH
    elif kind == 'dvae':
        model.head.update(in_channels=dims, num_embed=VOCAB)
        # 4 stride-2 stages: 16 px tokens, the backbone's patches
        tiny = dict(num_tokens=VOCAB, codebook_dim=8, num_layers=4,
                    hidden_dims=8)
        model.target_generator.update(tiny)
        torch.manual_seed(1)
        path = tmp / 'tokenizer_dvae.pth'
        torch.save({'state_dict': DiscreteVAE(**tiny).state_dict()}, path)
        model.target_generator.init_cfg.checkpoint = str(path)
    else:
        model.head.update(in_channels=dims, num_embed=VOCAB)
        version = 'v1' if kind == 'v1' else 'v2'
        tok = model.target_generator
        tok.init_cfg.checkpoint = str(
            save_tokenizer(version, tmp / f'tokenizer_{version}.pth'))
        if version == 'v1':
            tok.update(n_hid=8, n_blk_per_group=1, vocab_size=VOCAB)
        else:
            tok.update(encoder=dict(arch=TINY_ARCH, img_size=IMG,
                                    patch_size=PATCH),
                       num_embed=VOCAB, embed_dims=8)
    if model.get('neck'):
        model.backbone.out_indices = (0, -1)
        model.neck.update(embed_dims=dims, num_heads=2,
                          feedforward_channels=64, early_layers=1,
                          backbone_layers=2)
    pipeline = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    for step in pipeline:
        if step.type.endswith('RandomResizedCropAndInterpolationWithTwoPic'):
            step.size = IMG
            # DALL-E's tokens are 8 px: a 32 px view for a 4 x 4 grid
            step.second_size = IMG // 2 if kind == 'v1' else IMG
        if step.type.endswith('BlockwiseMaskGenerator'):
            step.update(input_size=GRID, num_masking_patches=MASKED,
                        min_num_patches=2, fixed_count=True)
    # keep the recipe's dataloader (and the mmpretrain scope it inherits)
    cfg.train_dataloader.update(batch_size=BATCH, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset.update(
        type='ImageNet', data_root=str(data_root), split='train',
        ann_file='', data_prefix='', pipeline=pipeline,
        classes=str(data_root / 'meta' / 'classes.txt'))
    few_iterations(cfg, max_iters=4, checkpoint_interval=4)
    return cfg


def first_batch(cfg: Config) -> dict:
    """One batch of the config's train dataloader, as the runner gives it
    to the hooks."""
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
        return next(iter(loader))


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model as the Runner builds it (with the top-level
    data preprocessor where the model has none), tokenizer loaded."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        model = MODELS.build(model_cfg)
    model.init_weights()  # loads the tokenizer
    return model


@pytest.fixture(scope='module', params=list(RECIPES))
def case(request, tmp_path_factory, data_root):
    """``(kind, config, model, batch)`` of each recipe."""
    kind = request.param
    cfg = tiny_config(kind, tmp_path_factory.mktemp(kind), data_root)
    torch.manual_seed(0)
    return kind, cfg, build_model(cfg), first_batch(cfg)


def not_blank(image: np.ndarray) -> bool:
    return image.size > 0 and float(image.std()) > 0


def test_predict_masked_scores_as_the_loss(case):
    kind, _, model, batch = case
    model.eval()
    data = model.data_preprocessor(batch, False)
    with torch.no_grad():
        losses = model.loss(data['inputs'], data['data_samples'])
    out = model.predict_masked(data['inputs'], data['data_samples'])
    mask = out['mask']
    assert mask.shape == (BATCH, GRID * GRID)
    assert (mask.sum(1) == MASKED).all()
    assert out['pred'].shape == out['target'].shape
    if kind == 'pixel':
        assert out['target'].shape == (BATCH, GRID * GRID, PATCH * PATCH * 3)
        mse = ((out['pred'] - out['target'])[mask]**2).mean()
        torch.testing.assert_close(mse, losses['loss_mim'])
    else:
        assert out['target'].shape == (BATCH, GRID * GRID)
        assert out['pred'].max() < VOCAB and out['pred'].min() >= 0
        acc = (out['pred'] == out['target'])[mask].float().mean()
        torch.testing.assert_close(acc, losses['acc_mim'])


def test_draw_shows_mask_target_and_prediction(case):
    kind, _, model, batch = case
    model.train()
    model.backbone.patch_embed.eval()  # e.g. a frozen part
    rng = torch.get_rng_state()
    hook = MIMVisualizationHook(interval=1, num_images=3)
    picture = hook.draw(model, batch)
    # each module's mode and the random numbers are left as they were
    assert model.training and model.backbone.training
    assert not model.target_generator.training
    assert not model.backbone.patch_embed.training
    assert torch.equal(torch.get_rng_state(), rng)

    assert picture.shape == picture_shape(kind, 3)
    assert picture.dtype == np.uint8 and not_blank(picture)
    bgr = picture[..., ::-1]
    model.eval()
    out = model.predict_masked(
        **dict(zip(('inputs', 'data_samples'),
                   model.data_preprocessor(batch, False).values())))
    for index in range(3):
        top = TEXT_HEIGHT + index * (TEXT_HEIGHT + CELL + PAD) + TEXT_HEIGHT
        cells = [bgr[top:top + CELL, PAD + c * (CELL + PAD):][:, :CELL]
                 for c in range(PANELS[kind])]
        assert all(not_blank(cell) for cell in cells)
        # each panel's patch (row, col) is drawn from its centre pixel
        centres = [cell[CELL // GRID // 2::CELL // GRID,
                        CELL // GRID // 2::CELL // GRID] for cell in cells]
        mask = out['mask'][index].reshape(GRID, GRID).numpy()
        # the input as loaded (BGR), its masked patches greyed
        raw = batch['inputs'][0][index].numpy().transpose(1, 2, 0)
        raw = raw[PATCH // 2::PATCH, PATCH // 2::PATCH]
        assert (centres[0][~mask] == raw[~mask]).all()
        greyed = (0.3 * raw[mask] + 0.7 * 128).round()
        assert np.abs(centres[0][mask] - greyed).max() <= 1
        assert (centres[2][~mask] == 200).all()  # unmasked: grey
        if kind != 'pixel':
            target = out['target'][index].reshape(GRID, GRID).numpy()
            pred = out['pred'][index].reshape(GRID, GRID).numpy()
            assert (centres[1] == token_colours(target)).all()
            assert (centres[2][mask] == token_colours(pred)[mask]).all()
            right = (pred == target) & mask
            assert (centres[3][right] == (0, 170, 0)).all()
            assert (centres[3][mask & ~right] == (0, 0, 220)).all()


def test_draw_takes_at_most_the_batch(case):
    kind, _, model, batch = case
    picture = MIMVisualizationHook(num_images=9, scale=1).draw(model, batch)
    assert picture.shape[0] == (TEXT_HEIGHT + BATCH * (TEXT_HEIGHT + IMG +
                                                      PAD) + PAD)


def test_bad_arguments_and_models_are_refused():
    for kwargs in (dict(interval=0), dict(num_images=0), dict(scale=0)):
        with pytest.raises(ValueError, match='must be positive'):
            MIMVisualizationHook(**kwargs)
    runner = type('R', (), {'model': torch.nn.Linear(1, 1)})()
    with pytest.raises(TypeError, match='predict_masked'):
        MIMVisualizationHook().before_train(runner)


def train_with_hook(kind: str, tmp: Path, data_root: Path,
                    cfg_options=None) -> Path:
    """tools/train.py on the tiny ``kind`` recipe with the hook every 2
    iterations, added to ``custom_hooks``, or by ``cfg_options`` (the
    ``--cfg-options`` of the command line) if given; returns the work
    dir."""
    cfg = tiny_config(kind, tmp, data_root)
    if cfg_options is None:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='beit_plugin.MIMVisualizationHook', interval=2,
                 num_images=2)]
    config = tmp / f'tiny_{kind}.py'
    cfg.dump(config)
    work_dir = tmp / 'work'
    load_tool('train').main([str(config), '--work-dir', str(work_dir)] +
                            (['--cfg-options', *cfg_options]
                             if cfg_options else []))
    return work_dir


@pytest.mark.slow
@pytest.mark.parametrize('kind', list(RECIPES))
def test_training_writes_a_png_every_interval(kind, tmp_path, data_root):
    work_dir = train_with_hook(kind, tmp_path, data_root)
    found = sorted(work_dir.glob('*/vis_data/vis_image/*.png'))
    assert [p.name for p in found] == ['mim_2.png', 'mim_4.png']
    for path in found:
        image = cv2.imread(str(path))
        assert image is not None, path
        assert image.shape == picture_shape(kind, 2), path
        assert not_blank(image), path


def tensorboard_images(folder: Path) -> Dict[str, list]:
    """Image tags of the TensorBoard events under ``folder``, with the
    steps each was written at."""
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    events = sorted(folder.rglob('events.out.tfevents.*'))
    assert events, f'no events file under {folder}'
    found = {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={'images': 0})
        acc.Reload()
        for tag in acc.Tags()['images']:
            found[tag] = [(event.step, event.width, event.height)
                          for event in acc.Images(tag)]
    return found


@pytest.mark.slow
def test_tensorboard_backend_gets_the_pictures(tmp_path, data_root):
    pytest.importorskip(
        'tensorboard', reason='the tensorboard extra is not installed: '
        'pip install -e ".[tensorboard]"')
    # docs/tools.md's command line: the hook as a default hook, TensorBoard in
    # place of the PNG backend
    work_dir = train_with_hook('v2', tmp_path, data_root, cfg_options=[
        'default_hooks.mim.type=beit_plugin.MIMVisualizationHook',
        'default_hooks.mim.interval=2', 'default_hooks.mim.num_images=2',
        'visualizer.vis_backends.0.type=TensorboardVisBackend'])
    height, width, _ = picture_shape('v2', 2)
    assert tensorboard_images(work_dir) == {
        'mim': [(2, width, height), (4, width, height)]}
    assert not list(work_dir.glob('*/vis_data/vis_image/*.png'))
