"""Our configs through MMPretrain's and MMSegmentation's own entry points:
``mmpretrain.get_model`` / ``inference_model`` / ``FeatureExtractor`` /
``ImageClassificationInferencer``, ``mmseg.apis.init_model`` /
``inference_model``, the tools their packages ship under ``.mim/tools``, our
model index (``model-index.yml``) and :mod:`beit_plugin.apis`.

Tiny models (the configs at width 32) with random weights; data and
checkpoints are written under tmp_path, nothing is downloaded.
"""
import re
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, Set, Tuple

import mmcv
import mmpretrain
import mmseg
import numpy as np
import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmpretrain.apis import (FeatureExtractor, ImageClassificationInferencer,
                             ModelHub)
from modelindex.load_model_index import load
from torch import nn

from beit_plugin.apis import (count_flops, extract_features,
                              register_model_index)
from beit_plugin.datasets.demo_data import (SEG_CLASSES, SHAPE_CLASSES,
                                            make_demo_data)
from beit_plugin.models.backbones import BEiT
from beit_plugin.registry import MODELS
from helpers import CLS_IMG as IMG
from helpers import CLS_PATCH as PATCH
from helpers import (CONFIGS, ROOT, TINY_ARCH, shrink_classifier,
                     shrink_segmentor)

CLS_DEMO = CONFIGS / 'finetune' / 'beit_demo_finetune.py'
SEG_DEMO = CONFIGS / 'seg' / 'beit_demo_upernet.py'
PRETRAIN_DEMO = CONFIGS / 'beit_pretrain.py'
JOBS = ('beit', 'beitv2', 'ablations', 'finetune', 'linear_probe', 'seg')
INDEXED = sorted([p for job in JOBS for p in (CONFIGS / job).glob('*.py')] +
                 [PRETRAIN_DEMO])
DIMS = TINY_ARCH['embed_dims']


def shrink_pretrainer(model: dict) -> None:
    """A pretraining recipe's model at width 32, 2 blocks, 32 px."""
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)
    model.head.in_channels = DIMS
    if model.get('neck'):
        model.backbone.out_indices = (0, -1)
        model.neck.update(embed_dims=DIMS, num_heads=2,
                          feedforward_channels=64, early_layers=1,
                          backbone_layers=TINY_ARCH['num_layers'])
    tokenizer = model.target_generator
    if 'encoder' in tokenizer:  # VQ-KD
        tokenizer.encoder.update(arch=TINY_ARCH, img_size=IMG,
                                 patch_size=PATCH)
    elif tokenizer.type.endswith('DALLEEncoder'):
        tokenizer.n_hid = 8


def shrink(cfg: Config) -> Config:
    """Any indexed config with a tiny model and no pretrained checkpoint."""
    if 'decode_head' in cfg.model:
        cfg.model = shrink_segmentor(cfg.model)
    elif 'target_generator' in cfg.model:
        shrink_pretrainer(cfg.model)
    else:
        shrink_classifier(cfg)
        cfg.model.backbone.init_cfg = None
    return cfg


def config_types(cfg) -> Set[str]:
    """Every ``type`` in a (nested) config."""
    if isinstance(cfg, dict):
        own = {cfg['type']} if isinstance(cfg.get('type'), str) else set()
        return own.union(*map(config_types, cfg.values()))
    if isinstance(cfg, (list, tuple)):
        return set().union(*map(config_types, cfg))
    return set()


def perturbed(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state with noise on every float tensor, so that a model
    that loaded it is told apart from a freshly built one."""
    return {k: v + torch.randn_like(v) * 0.1 if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def save(state: Dict[str, torch.Tensor], classes, path: Path) -> Path:
    """A checkpoint as the Runner writes it: state dict and dataset meta."""
    torch.save({'state_dict': state,
                'meta': {'dataset_meta': {'classes': list(classes)}}}, path)
    return path


def assert_loaded(model: nn.Module, checkpoint: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)['state_dict']
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in state.items():
        assert torch.equal(value, saved[key]), key


def preprocess(model: nn.Module, image: Path) -> torch.Tensor:
    """The image as the model's data preprocessor hands it to the model."""
    array = torch.from_numpy(mmcv.imread(str(image)))  # BGR, as pipelines
    return model.data_preprocessor(
        {'inputs': [array.permute(2, 0, 1)]}, False)['inputs']


def class_scores(model: nn.Module, image: Path) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = model(preprocess(model, image), mode='tensor')
    return logits.softmax(-1)[0].numpy()


def run_upstream_tool(package: ModuleType, tool: str, *args,
                      monkeypatch) -> None:
    """Run a tool that MMPretrain / MMSegmentation ship in ``.mim/tools``
    as ``python TOOL ARGS`` would, in this process."""
    path = Path(package.__file__).parent / '.mim' / 'tools' / tool
    monkeypatch.setattr(sys, 'argv', [str(path), *map(str, args)])
    # the tools' Runners leave their own default scope behind
    with DefaultScope.overwrite_default_scope('mmengine'):
        runpy.run_path(str(path), run_name='__main__')


@pytest.fixture(autouse=True)
def _keep_default_scope() -> Iterator[None]:
    """MMPretrain's and MMSegmentation's APIs set MMEngine's current default
    scope (``init_model`` leaves ``mmseg``): each test runs in MMPretrain's,
    as a user of its APIs would, and leaves it as it found it."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(root, cls_size=IMG, cls_train=8, cls_val=8, seg_train=2,
                   seg_val=2)
    return root


def tiny_config_file(path: Path, data_root: Path, out: Path) -> Path:
    """A demo config, tiny, reading the data under ``data_root``."""
    cfg = shrink(Config.fromfile(path))
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.data_root = str(data_root)
    cfg.dump(out / path.name)
    return out / path.name


@pytest.fixture(scope='module')
def cls_files(tmp_path_factory, demo_root) -> Dict[str, Path]:
    """The demo fine-tuning config (tiny), a checkpoint for it naming the
    demo classes, and a demo image."""
    tmp = tmp_path_factory.mktemp('cls')
    config = tiny_config_file(CLS_DEMO, demo_root / 'imagenet', tmp)
    model = mmpretrain.get_model(str(config))
    checkpoint = save(perturbed(model), SHAPE_CLASSES, tmp / 'cls.pth')
    image = sorted((demo_root / 'imagenet' / 'val').rglob('*.JPEG'))[0]
    return dict(config=config, checkpoint=checkpoint, image=image)


@pytest.fixture(scope='module')
def seg_files(tmp_path_factory, demo_root) -> Dict[str, Path]:
    """The demo UperNet config (tiny), a checkpoint and a demo image."""
    from mmseg.apis import init_model
    tmp = tmp_path_factory.mktemp('seg')
    config = tiny_config_file(SEG_DEMO, demo_root / 'ade', tmp)
    model = init_model(str(config), device='cpu')
    checkpoint = save(perturbed(model), SEG_CLASSES, tmp / 'seg.pth')
    image = sorted((demo_root / 'ade' / 'images' / 'validation').iterdir())[0]
    return dict(config=config, checkpoint=checkpoint, image=image)


# ---------------------------------------------------------------------------
# mmpretrain.get_model and the inferencers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('config', INDEXED, ids=lambda p: p.stem)
def test_get_model_builds_our_components_from_every_config(config):
    cfg = shrink(Config.fromfile(config))
    # a bare name of ours would resolve among MMPretrain's (or MMSeg's)
    # classes in their scope: 'BEiT' is MMPretrain's MIM algorithm
    types = config_types(cfg.model)
    assert not {t for t in types if t in MODELS.module_dict}
    ours = {t.split('.', 1)[1] for t in types if t.startswith('beit_plugin.')}
    assert 'BEiT' in ours
    model = mmpretrain.get_model(cfg)
    assert isinstance(model.backbone, BEiT)
    built = {type(m).__name__ for m in model.modules()
             if type(m).__module__.startswith('beit_plugin.')}
    assert ours <= built


def test_get_model_loads_the_checkpoint_and_its_classes(cls_files):
    model = mmpretrain.get_model(str(cls_files['config']),
                                 pretrained=str(cls_files['checkpoint']))
    assert_loaded(model, cls_files['checkpoint'])
    assert tuple(model._dataset_meta['classes']) == SHAPE_CLASSES


def test_image_classification_inferencer_takes_a_config_file(cls_files):
    inferencer = ImageClassificationInferencer(
        str(cls_files['config']), pretrained=str(cls_files['checkpoint']))
    result = inferencer(str(cls_files['image']))[0]
    model = mmpretrain.get_model(str(cls_files['config']),
                                 pretrained=str(cls_files['checkpoint']))
    scores = class_scores(model, cls_files['image'])
    np.testing.assert_allclose(result['pred_scores'], scores, atol=1e-6)
    assert result['pred_class'] == SHAPE_CLASSES[scores.argmax()]


def test_inference_model_finds_the_task_in_our_model_index(cls_files,
                                                           tmp_path):
    register_model_index()
    # the demo's config by name, at the tiny checkpoint's width
    tiny = dict(backbone=dict(arch=TINY_ARCH, img_size=IMG, init_cfg=None),
                head=dict(in_channels=DIMS))
    model = mmpretrain.get_model('beit_demo_finetune',
                                 pretrained=str(cls_files['checkpoint']),
                                 **tiny)
    assert_loaded(model, cls_files['checkpoint'])
    result = mmpretrain.inference_model(model, str(cls_files['image']))
    scores = class_scores(model, cls_files['image'])
    np.testing.assert_allclose(result['pred_scores'], scores, atol=1e-6)
    assert result['pred_class'] == SHAPE_CLASSES[scores.argmax()]
    # by name alone, the demo's own width
    demo = mmpretrain.get_model('beit_demo_finetune')
    checkpoint = save(perturbed(demo), SHAPE_CLASSES, tmp_path / 'demo.pth')
    result = mmpretrain.inference_model('beit_demo_finetune',
                                        str(cls_files['image']),
                                        pretrained=str(checkpoint))
    demo = mmpretrain.get_model('beit_demo_finetune',
                                pretrained=str(checkpoint))
    np.testing.assert_allclose(result['pred_scores'],
                               class_scores(demo, cls_files['image']),
                               atol=1e-6)


def test_feature_extractor_returns_the_blocks_asked_for(cls_files):
    extractor = FeatureExtractor(
        str(cls_files['config']), pretrained=str(cls_files['checkpoint']),
        backbone=dict(out_indices=(0, 1), out_type='featmap'))
    features = extractor(str(cls_files['image']), stage='backbone')[0]
    model = mmpretrain.get_model(str(cls_files['config']),
                                 pretrained=str(cls_files['checkpoint']))
    model.eval()
    expected = extract_features(model, preprocess(model,
                                                  cls_files['image']),
                                [0, 1])
    assert len(features) == 2
    for feature, reference in zip(features, expected):
        assert feature.shape == (DIMS, IMG // PATCH, IMG // PATCH)
        torch.testing.assert_close(feature, reference[0])


# ---------------------------------------------------------------------------
# our model index
# ---------------------------------------------------------------------------


def test_model_index_lists_every_config_once_with_its_task():
    index = load(str(ROOT / 'model-index.yml'))
    index.build_models_with_collections()
    assert index.check(silent=True) == []
    configs = [m.config for m in index.models]
    assert sorted(configs) == [p.relative_to(ROOT).as_posix()
                               for p in INDEXED]
    for model in index.models:
        assert model.name == Path(model.config).stem
        assert model.full_model.paper['URL'].startswith('https://arxiv.org/')
        job = Path(model.config).parent.name
        tasks = [r.task for r in model.results] if model.results else []
        assert tasks == {'finetune': ['Image Classification'],
                         'linear_probe': ['Image Classification'],
                         'seg': ['Semantic Segmentation']}.get(job, [])


def test_mmpretrain_finds_our_models_by_name():
    names = register_model_index()
    assert register_model_index() == names  # a second call is harmless
    assert len(names) == len(INDEXED)
    # also loads MMPretrain's own index, which refuses a name clash
    assert set(names) <= set(mmpretrain.list_models())
    classifiers = {p.stem for p in INDEXED
                   if p.parent.name in ('finetune', 'linear_probe')}
    assert set(mmpretrain.list_models(task='Image Classification')) & set(
        names) == classifiers
    config = ModelHub.get('beit_demo_finetune').config
    assert Path(config.filename).resolve() == CLS_DEMO  # via .mim


DEMOS = ['beit_pretrain', 'beit_demo_pretrain_random-mask',
         'beit_demo_pretrain_pixel', 'beit_demo_finetune', 'beit_demo_linear',
         'beit_demo_upernet']


@pytest.mark.parametrize('name', DEMOS)
def test_metafile_parameters_and_flops_of_the_demos(name):
    entry = next(m for m in load(str(ROOT / 'model-index.yml')).models
                 if m.name == name)
    model = mmpretrain.get_model(str(ROOT / entry.config))
    metadata = entry.metadata
    assert sum(p.numel() for p in model.parameters()) == metadata.parameters
    if metadata.flops is not None:  # MMPretrain's convention: extract_feat
        size = model._config.model.backbone.img_size
        model.forward = model.extract_feat
        assert count_flops(model, torch.zeros(1, 3, size, size)) == \
            metadata.flops


# ---------------------------------------------------------------------------
# beit_plugin.apis
# ---------------------------------------------------------------------------


def build(kind: str) -> Tuple[nn.Module, dict]:
    """A tiny model of each job, from its demo config, in eval mode, and
    its backbone's config."""
    path = dict(classifier=CLS_DEMO, pretrainer=PRETRAIN_DEMO,
                segmentor=SEG_DEMO)[kind]
    cfg = shrink(Config.fromfile(path))
    if kind == 'segmentor':
        from mmseg.apis import init_model
        model = init_model(cfg, device='cpu')
    else:
        model = mmpretrain.get_model(cfg)
    return model.eval(), cfg.model.backbone


@pytest.mark.parametrize('kind', ['classifier', 'pretrainer', 'segmentor'])
@pytest.mark.parametrize('out_type', ['featmap', 'raw'])
def test_extract_features_equals_the_backbone_with_those_out_indices(
        kind, out_type):
    model, backbone_cfg = build(kind)
    own = model.backbone.out_indices, model.backbone.out_type
    images = torch.randn(2, 3, 32, 48)
    layers = [-1, 0]
    features = extract_features(model, images, layers, out_type)
    # the config's backbone built with these outputs, with the same weights
    reference = MODELS.build(dict(backbone_cfg, out_indices=layers,
                                  out_type=out_type, init_cfg=None))
    # only a fine-tuning backbone's fc_norm (avg_featmap) is left out
    reference.load_state_dict({k: v for k, v in
                               model.backbone.state_dict().items()
                               if not k.startswith('fc_norm.')})
    with torch.no_grad():
        first, last = reference.eval()(images)  # in block order
    torch.testing.assert_close(features[0], last)
    torch.testing.assert_close(features[1], first)
    shape = (2, DIMS, 4, 6) if out_type == 'featmap' else (2, 1 + 24, DIMS)
    assert features[0].shape == features[1].shape == shape
    assert (model.backbone.out_indices, model.backbone.out_type) == own


def test_extract_features_refuses_another_backbone():
    with pytest.raises(TypeError, match='is not beit_plugin.BEiT'):
        extract_features(nn.Linear(2, 2), torch.zeros(1, 3, 8, 8), [0])


@pytest.mark.parametrize('kind', ['backbone', 'segmentor'])
def test_count_flops_adds_attention_to_mmengine_count(kind):
    if kind == 'backbone':
        model = BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH).eval()
        blocks, size = model.num_layers, IMG
    else:
        model = build('segmentor')[0]
        blocks, size = model.backbone.num_layers, 64
    inputs = torch.zeros(1, 3, size, size)
    tokens = 1 + (size // PATCH)**2
    # q @ k^T and weights @ v: tokens^2 * dims multiply-adds each, per block
    attention = blocks * 2 * tokens * tokens * DIMS
    plain = FlopAnalyzer(model, inputs).total()
    assert count_flops(model, inputs) == plain + attention


def test_count_flops_matches_mmpretrain_metafile_for_beit_base():
    """MMPretrain's BEiT computes attention with explicit matmuls, which
    MMEngine counts: its metafile's FLOPs are what ours should be."""
    theirs = ModelHub.get('beit-base-p16_beitv2-pre_8xb128-coslr-100e_in1k')
    model = mmpretrain.get_model(
        str(CONFIGS / 'finetune' /
            'beitv2_vit-base-p16_8xb128-coslr-100e_in1k.py'))
    model.forward = model.extract_feat
    assert count_flops(model, torch.zeros(1, 3, 224, 224)) == \
        theirs.metadata.flops == 17581219584


# ---------------------------------------------------------------------------
# MMSegmentation's APIs
# ---------------------------------------------------------------------------


def test_mmseg_init_model_and_inference_model(seg_files):
    from mmseg.apis import inference_model, init_model
    model = init_model(str(seg_files['config']),
                       str(seg_files['checkpoint']), device='cpu')
    assert isinstance(model.backbone, BEiT)
    assert_loaded(model, seg_files['checkpoint'])
    assert tuple(model.dataset_meta['classes']) == SEG_CLASSES
    result = inference_model(model, str(seg_files['image']))
    height, width = mmcv.imread(str(seg_files['image'])).shape[:2]
    assert result.seg_logits.data.shape == (len(SEG_CLASSES), height, width)
    assert torch.equal(result.pred_sem_seg.data[0],
                       result.seg_logits.data.argmax(0))


# ---------------------------------------------------------------------------
# the upstream tools (.mim/tools of the installed packages)
# ---------------------------------------------------------------------------


def test_mmpretrain_get_flops_tool_leaves_attention_out(monkeypatch, capsys):
    run_upstream_tool(mmpretrain, 'analysis_tools/get_flops.py', CLS_DEMO,
                      '--shape', 64, monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    flops = float(re.search(r'^Flops: ([\d.]+)G$', printed, re.M)[1]) * 1e9
    model = mmpretrain.get_model(str(CLS_DEMO))
    model.forward = model.extract_feat
    inputs = torch.zeros(1, 3, 64, 64)
    rounding = 0.5e6  # three decimals of G
    assert abs(flops - FlopAnalyzer(model, inputs).total()) <= rounding
    assert count_flops(model, inputs) - flops > 10 * rounding


def test_mmpretrain_browse_dataset_tool(cls_files, tmp_path, monkeypatch):
    # the visualizer dict of MMPretrain's runtime base carries the
    # `_scope_` key, which the tool passes on as an argument; `-m original`:
    # its other modes call matplotlib's adjust_bbox without the renderer
    # argument that matplotlib 3.11 requires
    run_upstream_tool(mmpretrain, 'visualization/browse_dataset.py',
                      cls_files['config'], '--not-show', '-o', tmp_path,
                      '-n', 3, '-m', 'original', '--cfg-options',
                      'visualizer._delete_=True',
                      'visualizer.type=UniversalVisualizer',
                      monkeypatch=monkeypatch)
    assert len(list(tmp_path.glob('*.JPEG'))) == 3


def test_mmpretrain_test_tool_show_dir(cls_files, tmp_path, monkeypatch):
    run_upstream_tool(mmpretrain, 'test.py', cls_files['config'],
                      cls_files['checkpoint'], '--work-dir',
                      tmp_path / 'work', '--show-dir', tmp_path / 'show',
                      monkeypatch=monkeypatch)
    images = Config.fromfile(cls_files['config']).test_dataloader
    images = Path(images.dataset.data_root) / 'val'
    drawn = sorted(p.name for p in (tmp_path / 'show').iterdir())
    assert drawn == sorted(f'{p.name}_0.png' for p in images.rglob('*.JPEG'))


def test_mmseg_test_tool_show_dir(seg_files, tmp_path, monkeypatch):
    # interval=1: MMSegmentation's runtime base draws every 50th batch only;
    # a fresh visualizer name: an instance of the base's name made earlier
    # in this process would be reused with its own save_dir
    run_upstream_tool(mmseg, 'test.py', seg_files['config'],
                      seg_files['checkpoint'], '--work-dir',
                      tmp_path / 'work', '--show-dir', tmp_path / 'show',
                      '--cfg-options',
                      'default_hooks.visualization.interval=1',
                      f'visualizer.name={tmp_path.name}',
                      monkeypatch=monkeypatch)
    drawn = list((tmp_path / 'show' / 'vis_data' / 'vis_image').glob('*.png'))
    assert len(drawn) == 2


def test_demo_classes_without_a_checkpoint():
    """Without a checkpoint's meta, the inferencer names the demo's classes
    (DemoImageNet's METAINFO), not ImageNet's 1000."""
    # MMPretrain's inferencer builds its pipeline in the current scope,
    # which an MMSegmentation test before may have left at mmseg
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(
            str(CONFIGS / 'finetune' / 'beit_demo_finetune.py'))
        image = np.zeros((IMG, IMG, 3), np.uint8)
        prediction = inferencer(image)[0]['pred_class']
    assert tuple(inferencer.classes) == SHAPE_CLASSES
    assert prediction in SHAPE_CLASSES


@pytest.mark.parametrize('config, shape', [
    ('linear_probe/beit_demo_linear.py', (64, 64, 3)),  # demo images only
    ('own_data/beit_demo_finetune_imagefolder.py', (80, 70, 3)),  # any size
    ('own_data/beit_demo_linear_imagefolder.py', (80, 70, 3)),
])
def test_inferencer_takes_an_in_memory_image(config, shape):
    """MMPretrain's inferencers swap the test pipeline's LoadImageFromFile
    (found by that exact name) for their own loader, so the configs keep it
    there: an array, not a file, goes through."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(str(CONFIGS / config))
        result = inferencer(np.zeros(shape, np.uint8))[0]
    assert result['pred_scores'].shape == (8, )
