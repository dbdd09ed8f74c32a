"""The configs for one's own data (configs/own_data), run through MMEngine's
Runner on small random images of several sizes written here, and the errors
bad data gets: an empty folder, a file that is not an image, an annotation
that does not fit, a class count or class list that does not match the
model, a tokenizer made for another patch grid.
"""
import copy
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from beit_plugin.registry import MODELS
from helpers import ROOT, TINY_ARCH, few_iterations

OWN = ROOT / 'configs' / 'own_data'
PRETRAIN = OWN / 'beit_demo_pretrain_images.py'
PRETRAIN_FULL = OWN / 'beitv2_vit-base-p16_8xb256-amp-coslr-300e_images.py'
FINETUNE = OWN / 'beit_demo_finetune_imagefolder.py'
LINEAR = OWN / 'beit_demo_linear_imagefolder.py'
SEG = OWN / 'beit_demo_upernet_ade-layout.py'
SIZES = [(50, 70), (100, 90), (64, 64)]
CLASSES = ('ant', 'bee', 'cat')
SEG_CLASSES = ('sky', 'tree', 'road')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


@pytest.fixture(autouse=True)
def _keep_default_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


def write_image(path: Path, shape: Tuple[int, ...], high: int = 256) -> Path:
    """Random uint8 pixels in ``[0, high)`` as an image file (the format from
    the suffix): ``(H, W, 3)`` colour or ``(H, W)`` one channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.as_posix()) + sum(shape))
    assert cv2.imwrite(str(path), rng.integers(0, high, shape, np.uint8))
    return path


@pytest.fixture(scope='module')
def images(tmp_path_factory) -> Path:
    """``flat/``: images side by side; ``nested/``: in class folders and a
    subfolder; both with a file that is not an image."""
    root = tmp_path_factory.mktemp('images')
    for i, name in enumerate(['a.jpg', 'b.png', 'c.JPEG', 'd.jpg']):
        write_image(root / 'flat' / name, SIZES[i % 3] + (3, ))
    for i, name in enumerate(['ant/1.jpg', 'ant/more/2.png', 'bee/3.jpg']):
        write_image(root / 'nested' / name, SIZES[i % 3] + (3, ))
    for layout in ('flat', 'nested'):
        (root / layout / 'notes.txt').write_text('not an image')
    return root


@pytest.fixture(scope='module')
def imagefolder(tmp_path_factory) -> Path:
    """``train/<class>/``, ``val/<class>/`` for :data:`CLASSES`."""
    root = tmp_path_factory.mktemp('imagefolder')
    for split, count in (('train', 2), ('val', 1)):
        for name in CLASSES:
            for i in range(count):
                write_image(root / split / name / f'{i}.jpg',
                            SIZES[i % 3] + (3, ))
    return root


def write_ade(root: Path, num_classes: int) -> Path:
    """The ADE20K layout, annotations with values ``0..num_classes``."""
    for split, count in (('training', 4), ('validation', 2)):
        for i in range(count):
            shape = SIZES[i % 3]
            write_image(root / 'images' / split / f'{i}.jpg', shape + (3, ))
            write_image(root / 'annotations' / split / f'{i}.png', shape,
                        high=num_classes + 1)
    return root


def edited_copy(config: Path, folder: Path, old: str, new: str) -> Path:
    """``config`` with the line ``old`` replaced by ``new``, as a user edits
    their copy (in ``folder``; its ``_base_`` made absolute)."""
    text = config.read_text()
    assert old in text
    base = re.search(r"^_base_ = '(.*)'$", text, re.M).group(1)
    text = text.replace(old, new).replace(
        f"_base_ = '{base}'", f"_base_ = '{(config.parent / base).resolve()}'")
    path = folder / config.name
    path.write_text(text)
    return path


def load(config: Path, data_root: Path, tmp_path: Path,
         val_interval: Optional[int] = None) -> Config:
    """``config`` pointed at ``data_root``: batch 2, no worker processes, 2
    iterations, no pretrained backbone, work_dir in ``tmp_path``."""
    cfg = Config.fromfile(config)
    for key in LOADERS:
        if cfg.get(key):
            cfg[key].dataset.data_root = str(data_root)
            cfg[key].update(num_workers=0, persistent_workers=False)
    cfg.train_dataloader.batch_size = 2
    if 'init_cfg' in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None
    few_iterations(cfg, max_iters=2, checkpoint_interval=2,
                   val_interval=val_interval)
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


def data_files(dataset: BaseDataset, key: str = 'img_path') -> List:
    """``key`` of every sample of ``dataset``, in order."""
    return [dataset.get_data_info(i)[key] for i in range(len(dataset))]


def build_loader(cfg: Config, key: str = 'train_dataloader') -> DataLoader:
    """The data loader ``cfg[key]`` as the Runner builds it."""
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return Runner.build_dataloader(cfg[key])


# ---------------------------------------------------------------------------
# Pretraining on a folder of images
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('layout', ['flat', 'nested'])
def test_pretraining_trains_on_every_image_of_a_folder(images, layout,
                                                       tmp_path):
    cfg = load(PRETRAIN, images / layout, tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    expected = sorted(p for p in (images / layout).rglob('*')
                      if p.suffix != '.txt' and p.is_file())
    assert sorted(map(Path, data_files(
        runner.train_dataloader.dataset))) == expected
    assert len(expected) == (4 if layout == 'flat' else 3)
    for key in ('loss_mim', 'loss_mim_1'):
        loss = runner.message_hub.get_scalar(f'train/{key}').current()
        assert np.isfinite(loss) and loss > 0


@pytest.mark.parametrize('config, base', [
    (PRETRAIN, ROOT / 'configs/beit_pretrain.py'),
    (PRETRAIN_FULL,
     ROOT / 'configs/beitv2'
     / 'beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py'),
])
def test_pretraining_configs_change_only_the_data_set(config, base):
    own, recipe = (Config.fromfile(c).to_dict() for c in (config, base))
    for cfg in (own, recipe):
        for key in ('data_root', 'tokenizer_checkpoint'):
            cfg.pop(key, None)
        cfg['model']['target_generator']['init_cfg'].pop('checkpoint')
    loaders = [cfg.pop('train_dataloader') for cfg in (own, recipe)]
    assert own == recipe
    datasets = [loader.pop('dataset') for loader in loaders]
    assert loaders[0] == loaders[1]
    pipelines = [dataset.pop('pipeline') for dataset in datasets]
    assert datasets[0] == dict(type='CustomDataset',
                               data_root='data/my_images', with_label=False)
    assert pipelines[0][0] == dict(type='beit_plugin.CheckedLoadImageFromFile')
    assert pipelines[0] == pipelines[1]


def test_full_recipe_reads_a_folder_and_the_converted_tokenizer(images):
    cfg = Config.fromfile(PRETRAIN_FULL)
    # the file README's tools/convert_checkpoint.py command writes
    assert cfg.model.target_generator.init_cfg.checkpoint == \
        'checkpoints/vqkd_clip.pth'
    cfg.train_dataloader.update(batch_size=3, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(images / 'nested')
    batch = next(iter(build_loader(cfg)))
    assert [tuple(view.shape) for view in batch['inputs']] == \
        [(3, 3, 224, 224)] * 2
    assert batch['data_samples'][0].mask.shape == (14, 14)
    # the model the config builds (at a tiny width) passes the grid check
    model = tiny_width(cfg.model)
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        assert MODELS.build(model).backbone.patch_grid == (14, 14)


def tiny_width(model: dict) -> dict:
    """A BEiT v2 pretraining model config at :data:`TINY_ARCH`'s width and
    depth, its grids (image and patch sizes) unchanged."""
    model = copy.deepcopy(model)
    model.backbone.update(arch=TINY_ARCH, out_indices=(0, -1))
    model.neck.update(embed_dims=32, num_heads=2, feedforward_channels=64,
                      early_layers=1, backbone_layers=2)
    model.head.update(in_channels=32, num_embed=16)
    model.target_generator.update(num_embed=16, init_cfg=None)
    model.target_generator.encoder.arch = TINY_ARCH
    return model


# ---------------------------------------------------------------------------
# A tokenizer made for another grid
# ---------------------------------------------------------------------------


def test_tokenizer_for_another_grid_is_refused_when_built():
    """The full recipe (224 px, 16 px patches) with the demo tokenizer (64
    px, 8 px patches)."""
    model = tiny_width(Config.fromfile(PRETRAIN_FULL).model)
    model.target_generator.encoder.update(img_size=64, patch_size=8)
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        with pytest.raises(ValueError) as error:
            MODELS.build(model)
    message = str(error.value)
    assert 'VQKDTokenizer is built for 64 x 64 px images in 8 px patches ' \
        '-> (8, 8) tokens but the backbone for 224 x 224 px images in ' \
        '16 px patches -> (14, 14) patches' in message
    assert 'tools/convert_checkpoint.py' in message
    assert 'configs/vqkd/' in message
    assert 'model.target_generator' in message


def test_tokenizer_view_of_another_grid_is_refused_at_the_first_step(
        images, tmp_path):
    """The demo pretraining with a 32 px second view: the tokenizer would
    give 4 x 4 tokens for the backbone's 8 x 8 patches."""
    cfg = load(PRETRAIN, images / 'flat', tmp_path)
    crop = cfg.train_dataloader.dataset.pipeline[3]
    assert crop.type == 'RandomResizedCropAndInterpolationWithTwoPic'
    crop.second_size = 32
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError) as error:
        runner.train()
    message = str(error.value)
    assert message.startswith(
        'targets of shape (2, 16) from the tokenizer VQKDTokenizer (its '
        '32 x 32 px view in 8 px patches -> (4, 4) tokens) do not match the '
        "backbone's (2, 64) (batch, patches) (its 64 x 64 px images in 8 px "
        "patches -> (8, 8) patches): set the pipeline's second_size")
    assert 'tools/convert_checkpoint.py' in message
    assert runner.iter == 0


# ---------------------------------------------------------------------------
# Folders and files that cannot be used
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('config', [PRETRAIN, FINETUNE])
@pytest.mark.parametrize('content', ['nothing', 'no image'])
def test_folder_without_images_is_named(config, content, tmp_path):
    root = tmp_path / 'my_images'
    folder = root if config == PRETRAIN else root / 'train'
    folder.mkdir(parents=True)
    if content == 'no image':
        (folder / 'notes.txt').write_text('not an image')
    with pytest.raises(RuntimeError,
                       match=f'Found 0 files .*{re.escape(str(folder))}'):
        build_loader(load(config, root, tmp_path))


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / 'no_such_folder'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_loader(load(PRETRAIN, missing, tmp_path))


@pytest.mark.parametrize('content', [b'', b'not an image', 'truncated'])
def test_image_that_cannot_be_decoded_is_named_from_a_worker(
        images, content, tmp_path):
    """Through a data loader worker process, as in training."""
    root = tmp_path / 'images'
    for path in (images / 'flat').iterdir():
        (root / path.name).parent.mkdir(exist_ok=True)
        (root / path.name).write_bytes(path.read_bytes())
    if content == 'truncated':
        content = (images / 'flat' / 'a.jpg').read_bytes()[:300]
    bad = root / 'broken.jpg'
    bad.write_bytes(content)
    cfg = load(PRETRAIN, root, tmp_path)
    cfg.train_dataloader.update(batch_size=5, num_workers=1)
    batches = iter(build_loader(cfg))
    try:
        with pytest.raises(OSError, match=r'DataLoader worker(.|\n)*'
                           + re.escape(f'cannot load the image {bad}')):
            next(batches)
    finally:
        batches._shutdown_workers()  # now, not when the traceback goes


# ---------------------------------------------------------------------------
# Fine-tuning and linear probing on an ImageFolder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('config', [FINETUNE, LINEAR], ids=['finetune',
                                                            'linear'])
def test_classification_trains_with_the_class_count_set_once(
        config, imagefolder, tmp_path):
    edited = edited_copy(config, tmp_path, 'num_classes = 8 ',
                         'num_classes = 3 ')
    cfg = load(edited, imagefolder, tmp_path, val_interval=2)
    assert cfg.val_evaluator.topk == (1, )  # top-5 of 3 classes is refused
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    model = runner.model
    assert model.head.num_classes == model.data_preprocessor.num_classes == 3
    for loader in (runner.train_dataloader, runner.val_dataloader):
        assert loader.dataset.metainfo['classes'] == CLASSES
    labels = {Path(path).parent.name: info for path, info in zip(
        data_files(runner.train_dataloader.dataset),
        data_files(runner.train_dataloader.dataset, 'gt_label'))}
    assert labels == {name: i for i, name in enumerate(CLASSES)}
    assert 0 <= runner.message_hub.get_scalar(
        'val/accuracy/top1').current() <= 100


@pytest.mark.parametrize('config', [FINETUNE, LINEAR], ids=['finetune',
                                                            'linear'])
def test_class_count_not_the_model_is_refused_before_training(
        config, imagefolder, tmp_path):
    runner = Runner.from_cfg(load(config, imagefolder, tmp_path,
                                  val_interval=2))
    with pytest.raises(ValueError) as error:
        runner.train()
    assert str(error.value) == (
        f'the train data set in {imagefolder / "train"} has 3 classes (ant, '
        'bee, cat) but the config sets model.head.num_classes=8, '
        'data_preprocessor.num_classes=8, val_evaluator.topk=(1, 5): set '
        'num_classes = 3 at the top of the config, or pass --cfg-options '
        '"model.head.num_classes=3" "data_preprocessor.num_classes=3" '
        '"val_evaluator.topk=(1,)"')
    assert runner.iter == 0


def test_class_count_is_checked_before_testing(imagefolder, tmp_path):
    cfg = load(LINEAR, imagefolder, tmp_path)
    with pytest.raises(ValueError, match=re.escape(
            f'the test data set in {imagefolder / "val"} has 3 classes')):
        Runner.from_cfg(cfg).test()


def test_validation_classes_other_than_training_are_refused(
        imagefolder, tmp_path):
    root = tmp_path / 'set'
    for path in imagefolder.rglob('*.jpg'):
        if path.parent.name != 'bee' or path.parts[-3] != 'val':
            target = root / path.relative_to(imagefolder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    runner = Runner.from_cfg(load(FINETUNE, root, tmp_path, val_interval=2))
    with pytest.raises(ValueError) as error:
        runner.train()
    assert str(error.value) == (
        f'the validation classes in {root / "val"} (cat from class 1) are '
        f'not the training classes in {root / "train"} (bee, cat from class '
        '1): both need the same class folders')


@pytest.mark.parametrize('config', [
    FINETUNE, LINEAR, SEG, ROOT / 'configs/finetune/beit_demo_finetune.py',
    ROOT / 'configs/linear_probe/beit_demo_linear.py',
    ROOT / 'configs/seg/beit_demo_upernet.py'
], ids=lambda p: p.stem)
def test_labelled_configs_check_the_class_count(config):
    hooks = Config.fromfile(config).custom_hooks
    assert dict(type='beit_plugin.ClassCountCheckHook') in hooks


@pytest.mark.parametrize('config', [FINETUNE, LINEAR, SEG],
                         ids=lambda p: p.stem)
def test_labelled_configs_start_from_the_pretraining_on_own_images(config):
    """The last checkpoint tools/train.py writes for the pretraining config
    (work_dirs/<config name>/iter_<max_iters>.pth)."""
    iters = Config.fromfile(PRETRAIN).train_cfg.max_iters
    assert Config.fromfile(config).model.backbone.init_cfg.checkpoint == \
        f'work_dirs/{PRETRAIN.stem}/iter_{iters}.pth'


# ---------------------------------------------------------------------------
# Segmentation on the ADE20K layout
# ---------------------------------------------------------------------------


def seg_config(tmp_path: Path, data_root: Path,
               classes: Sequence[str] = SEG_CLASSES) -> Config:
    """The segmentation config with its class list edited to ``classes``."""
    text = SEG.read_text()
    old = text[text.index('classes = ('):text.index('num_classes')]
    edited = edited_copy(SEG, tmp_path, old, f'classes = {tuple(classes)}\n')
    return load(edited, data_root, tmp_path, val_interval=2)


def test_segmentation_trains_with_its_own_class_list(tmp_path):
    data_root = write_ade(tmp_path / 'ade', len(SEG_CLASSES))
    runner = Runner.from_cfg(seg_config(tmp_path, data_root))
    runner.train()
    assert runner.iter == 2
    model = runner.model
    assert model.decode_head.num_classes == 3
    assert model.auxiliary_head.num_classes == 3
    for loader in (runner.train_dataloader, runner.val_dataloader):
        assert loader.dataset.metainfo['classes'] == SEG_CLASSES
        assert len(loader.dataset.metainfo['palette']) == 3
    maps = data_files(runner.train_dataloader.dataset, 'seg_map_path')
    assert sorted(Path(m).name for m in maps) == [
        f'{i}.png' for i in range(4)]
    assert 0 <= runner.message_hub.get_scalar('val/mIoU').current() <= 100


def test_segmentation_pipelines_are_the_demos_but_for_the_loaders():
    own = Config.fromfile(SEG)
    demo = Config.fromfile(ROOT / 'configs/seg/beit_demo_upernet.py')
    for key, loaders in (
            ('train_dataloader', ['beit_plugin.CheckedLoadImageFromFile',
                                  'beit_plugin.CheckedLoadAnnotations']),
            # MMSegmentation's inference_model replaces these by name
            ('val_dataloader', ['LoadImageFromFile', 'LoadAnnotations'])):
        mine, theirs = (c[key].dataset.pipeline for c in (own, demo))
        assert [s.type for s in mine if 'Load' in s.type] == loaders
        assert [s for s in mine if 'Load' not in s.type] == \
            [s for s in theirs if 'Load' not in s.type]
    # the demo's 9 classes by default; the pretraining on one's own images
    assert own.model.backbone.init_cfg.pop('checkpoint') == \
        'work_dirs/beit_demo_pretrain_images/iter_800.pth'
    demo.model.backbone.init_cfg.pop('checkpoint')
    assert own.model == demo.model


@pytest.mark.parametrize('case', ['empty', 'colour', 'size', 'value'])
def test_unusable_segmentation_map_is_named(case, tmp_path):
    data_root = write_ade(tmp_path / 'ade', len(SEG_CLASSES))
    bad = data_root / 'annotations' / 'training' / '1.png'
    shape = SIZES[1]
    if case == 'empty':
        bad.write_bytes(b'')
    elif case == 'colour':
        write_image(bad, shape + (3, ), high=4)
    elif case == 'size':
        write_image(bad, (shape[0] + 8, shape[1]), high=4)
    else:  # 5 is class 4 (of 0-2) after reduce_zero_label
        cv2.imwrite(str(bad), np.full(shape, 5, np.uint8))
    dataset = build_loader(seg_config(tmp_path, data_root)).dataset
    index = data_files(dataset, 'seg_map_path').index(str(bad))
    expected = {
        'empty': f'cannot load the segmentation map {bad} (0 bytes)',
        'colour': f'the segmentation map {bad} has shape (100, 90, 3): it '
        'must be one channel',
        'size': f'the segmentation map {bad} is 108 x 90 px but its image '
        f'{data_root / "images/training/1.jpg"} is 100 x 90 px',
        'value': f'the segmentation map {bad} holds the values 5, past the 3 '
        'classes of the config (values 1-3, 0 = not labelled)',
    }[case]
    with pytest.raises((OSError, ValueError), match=re.escape(expected)):
        dataset[index]


def test_segmentation_class_list_not_the_model_is_refused(tmp_path):
    data_root = write_ade(tmp_path / 'ade', len(SEG_CLASSES))
    cfg = seg_config(tmp_path, data_root)
    for key in LOADERS:
        cfg[key].dataset.metainfo.classes = ('sky', 'tree')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=re.escape(
            f'the train data set in {data_root / "images/training"} has 2 '
            'classes (sky, tree) but the config sets '
            'model.decode_head.num_classes=3, '
            'model.auxiliary_head.num_classes=3: ')):
        runner.train()


def test_checked_loaders_keep_upstreams_outputs(images):
    from mmcv.transforms import LoadImageFromFile
    from beit_plugin.datasets.transforms import CheckedLoadImageFromFile
    path = str(images / 'flat' / 'b.png')
    ours = CheckedLoadImageFromFile()(dict(img_path=path))
    theirs = LoadImageFromFile()(dict(img_path=path))
    assert ours.keys() == theirs.keys()
    np.testing.assert_array_equal(ours['img'], theirs['img'])
    assert ours['img_shape'] == SIZES[1]
