"""Linear separability of every block of a frozen BEiT backbone (offline).

Takes a classification config (e.g. ``configs/linear_probe/*.py``): its
``model.backbone`` (with its ``init_cfg``, i.e. the checkpoint it probes),
its data preprocessor and the datasets of its
``train_dataloader`` / ``val_dataloader``, both read with the val pipeline
(no augmentation). Every block's CLS token and average patch token are
extracted once, and an L-BFGS logistic regression is fitted to each (see
:mod:`beit_plugin.evaluation.layer_probe`). Prints one table row per block
and writes the numbers as JSON with ``--out``.

``--dense`` takes a segmentation config (e.g.
``configs/seg/beit_demo_upernet.py``) instead: its images, through the val
pipeline, are cut into crops of the backbone's input size (half-overlapping,
covering each image), and every patch token is probed for its patch's
majority label, classes weighted equally; the score is the mean class
accuracy.

Examples::

    python tools/probe_layers.py configs/linear_probe/beit_demo_linear.py
    # the same for a randomly initialised backbone
    python tools/probe_layers.py configs/linear_probe/beit_demo_linear.py \\
        --cfg-options model.backbone.init_cfg=None
    # another checkpoint
    python tools/probe_layers.py configs/linear_probe/beit_demo_linear.py \\
        --checkpoint work_dirs/beit_pretrain/iter_1000.pth
    # every patch token against its segmentation label
    python tools/probe_layers.py configs/seg/beit_demo_upernet.py --dense

Meant for small data sets: all images and features are held in memory.
"""
import argparse
import copy
import json
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

import beit_plugin  # noqa: F401  (registers the backbone and datasets)
from beit_plugin.evaluation import (block_features, fit_logistic_probe,
                                    patch_labels)
from beit_plugin.models.backbones import BEiT
from beit_plugin.progress import track
from beit_plugin.registry import DATASETS, MODELS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Logistic-regression probe of every frozen block')
    parser.add_argument('config', help='classification config file path')
    parser.add_argument(
        '--checkpoint',
        help="checkpoint to probe instead of the config's "
        'model.backbone.init_cfg (keys under "backbone.")')
    parser.add_argument('--out', help='write the accuracies to this JSON')
    parser.add_argument(
        '--dense',
        action='store_true',
        help='a segmentation config: probe every patch token for its '
        "patch's label (mean class accuracy)")
    parser.add_argument(
        '--weight-decay', type=float, default=1e-3,
        help='L2 penalty of the logistic regression')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'model.backbone.init_cfg=None; no white space allowed')
    return parser.parse_args(argv)


def _images(cfg: Config, loader_key: str,
            preprocessor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """All images of a dataloader's dataset, through the val pipeline and
    the model's data preprocessor: ``(M, 3, H, W)``, ``(M,)`` labels and
    the number of classes the dataset declares."""
    dataset_cfg = copy.deepcopy(cfg[loader_key].dataset)
    dataset_cfg.pipeline = copy.deepcopy(cfg.val_dataloader.dataset.pipeline)
    dataset = DATASETS.build(dataset_cfg)
    images, labels = [], []
    for start in range(0, len(dataset), 256):
        batch = pseudo_collate(
            [dataset[i] for i in range(start, min(start + 256, len(dataset)))])
        data = preprocessor(batch, training=False)
        images.append(data['inputs'])
        labels.append(
            torch.cat([sample.gt_label for sample in data['data_samples']]))
    return (torch.cat(images), torch.cat(labels),
            len(dataset.metainfo['classes']))


def _crop_offsets(size: int, crop: int) -> List[int]:
    """Starts of half-overlapping crops of ``crop`` px that cover ``size``."""
    return sorted(set(range(0, size - crop + 1, crop // 2)) | {size - crop})


def _seg_crops(cfg: Config, loader_key: str, preprocessor,
               crop: Tuple[int, int],
               patch_size: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """All images of a segmentation dataloader's dataset, through the val
    pipeline and the model's data preprocessor, cut into ``crop`` crops:
    ``(M, 3, h, w)`` crops, ``(M, N)`` patch labels (:func:`patch_labels`,
    255 for ignored) and the number of classes the dataset declares."""
    dataset_cfg = copy.deepcopy(cfg[loader_key].dataset)
    dataset_cfg.pipeline = copy.deepcopy(cfg.val_dataloader.dataset.pipeline)
    dataset = DATASETS.build(dataset_cfg)
    crops, maps = [], []
    # one at a time: the sizes may differ
    for i in track(range(len(dataset)), f'{loader_key} crops'):
        data = preprocessor(pseudo_collate([dataset[i]]), training=False)
        # the image may be padded (test_cfg), its label map is not
        image, sample = data['inputs'][0], data['data_samples'][0]
        seg_map = sample.gt_sem_seg.data[0]
        height, width = seg_map.shape
        if height < crop[0] or width < crop[1]:
            raise ValueError(
                f'{sample.img_path}: {height} x {width} px after the val '
                f'pipeline, smaller than the backbone input {crop[0]} x '
                f'{crop[1]}')
        for top in _crop_offsets(height, crop[0]):
            for left in _crop_offsets(width, crop[1]):
                crops.append(image[:, top:top + crop[0], left:left + crop[1]])
                maps.append(seg_map[top:top + crop[0], left:left + crop[1]])
    return (torch.stack(crops), patch_labels(torch.stack(maps), patch_size),
            len(dataset.metainfo['classes']))


def _dense_probe(cfg: Config, backbone: BEiT, preprocessor,
                 weight_decay: float) -> Dict[str, float]:
    """Mean class accuracy (%) of a class-balanced logistic regression on
    each block's frozen patch tokens, for their patches' labels."""
    crop = tuple(g * backbone.patch_size for g in backbone.patch_grid)
    data = {}
    for split, key in (('train', 'train_dataloader'),
                       ('val', 'val_dataloader')):
        images, labels, num_classes = _seg_crops(cfg, key, preprocessor, crop,
                                                 backbone.patch_size)
        labels = labels.flatten()
        keep = labels != 255
        data[split] = ({name: features[keep] for name, features in
                        block_features(backbone, images, dense=True).items()},
                       labels[keep])
    (train_f, train_y), (val_f, val_y) = data['train'], data['val']
    return {
        name: fit_logistic_probe(train_f[name], train_y, val_f[name], val_y,
                                 num_classes, weight_decay=weight_decay,
                                 balanced=True)
        for name in track(list(train_f), 'probes')
    }


def probe(cfg: Config,
          checkpoint: Optional[str] = None,
          weight_decay: float = 1e-3,
          dense: bool = False) -> Dict[str, float]:
    """Top-1 (%) of a logistic regression on each block's frozen CLS and
    average patch token; keys as :func:`block_features` names them. With
    ``dense`` (a segmentation config), the mean class accuracy (%) of each
    block's patch tokens."""
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    if checkpoint is not None:
        backbone_cfg.init_cfg = dict(type='Pretrained', checkpoint=checkpoint,
                                     prefix='backbone.')
    # the last block, valid at any depth; every block once the depth is known
    backbone_cfg.update(out_type='raw', frozen_stages=-1, out_indices=-1)
    backbone = MODELS.build(backbone_cfg)
    if not isinstance(backbone, BEiT):
        raise TypeError(f'{type(backbone).__module__}.'
                        f'{type(backbone).__name__} is not beit_plugin.BEiT '
                        "(model.backbone.type should be 'beit_plugin.BEiT')")
    backbone.out_indices = tuple(range(backbone.num_layers))
    # without a log file, MMEngine prints every parameter's initialisation
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        backbone.init_weights()
    finally:
        logger.setLevel(level)
    init_cfg = backbone_cfg.get('init_cfg')
    print('backbone: ' + (init_cfg['checkpoint'] if init_cfg and 'checkpoint'
                          in init_cfg else 'random initialisation'))
    # MMPretrain configs keep it at the top level; ImageClassifier's default
    preprocessor_cfg = copy.deepcopy(
        cfg.model.get('data_preprocessor', cfg.get('data_preprocessor', {})))
    preprocessor_cfg.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
    preprocessor = MODELS.build(preprocessor_cfg)
    if dense:
        return _dense_probe(cfg, backbone, preprocessor, weight_decay)
    train_x, train_y, num_classes = _images(cfg, 'train_dataloader',
                                            preprocessor)
    val_x, val_y, _ = _images(cfg, 'val_dataloader', preprocessor)
    train_f = block_features(backbone, train_x)
    val_f = block_features(backbone, val_x)
    return {
        name: fit_logistic_probe(train_f[name], train_y, val_f[name], val_y,
                                 num_classes, weight_decay=weight_decay)
        for name in track(list(train_f), 'probes')
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    torch.manual_seed(0)  # a random backbone (init_cfg=None) is reproducible
    results = probe(cfg, args.checkpoint, args.weight_decay, args.dense)
    if args.dense:
        print('block  patch tokens  (mean class accuracy %)')
        for name, value in results.items():
            print(f'{name[:-6]:>6}  {value:12.1f}')
    else:
        print('block  CLS token  avg patch token  (top-1 %)')
        for name in results:
            if name.endswith(' cls'):
                block = name[:-4]
                print(f'{block:>6}  {results[name]:9.1f}  '
                      f'{results[block + " avg"]:15.1f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
