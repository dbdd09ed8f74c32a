"""Refuse a data set whose number of classes is not the model's."""
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.dataset import BaseDataset
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop
from torch import nn

from beit_plugin.registry import HOOKS

SHOWN_NAMES = 5  # class names quoted in the error


def class_counts(model: nn.Module,
                 preprocessor_key: str = 'data_preprocessor'
                 ) -> List[Tuple[str, int]]:
    """The config key and value of every class count the model was built
    with.

    Classifiers: ``model.head.num_classes`` and, when set, the data
    preprocessor's (``preprocessor_key``, the one batch augments use);
    segmentors: ``model.decode_head.num_classes`` and each auxiliary head's.

    Args:
        model: a built model (not wrapped).
        preprocessor_key: where the config sets the data preprocessor,
            ``data_preprocessor`` (top level) or ``model.data_preprocessor``.
    """
    counts = []
    for name in ('head', 'decode_head'):
        head = getattr(model, name, None)
        if getattr(head, 'num_classes', None) is not None:
            counts.append((f'model.{name}.num_classes', head.num_classes))
    auxiliary = getattr(model, 'auxiliary_head', None)
    if isinstance(auxiliary, nn.ModuleList):
        counts += [(f'model.auxiliary_head.{i}.num_classes', aux.num_classes)
                   for i, aux in enumerate(auxiliary)]
    elif getattr(auxiliary, 'num_classes', None) is not None:
        counts.append(('model.auxiliary_head.num_classes',
                       auxiliary.num_classes))
    preprocessor = getattr(model, 'data_preprocessor', None)
    if getattr(preprocessor, 'num_classes', None) is not None:
        counts.append((f'{preprocessor_key}.num_classes',
                       preprocessor.num_classes))
    return counts


def dataset_folder(dataset: BaseDataset) -> str:
    """The image folder of a data set (of the first one it wraps), else its
    ``data_root``."""
    while not hasattr(dataset, 'data_prefix'):
        inner = getattr(dataset, 'dataset', None)
        if inner is None:  # a ConcatDataset
            inner = getattr(dataset, 'datasets', [None])[0]
        if inner is None:
            return type(dataset).__name__
        dataset = inner
    prefix = dataset.data_prefix
    folder = prefix.get('img_path') if isinstance(prefix, dict) else prefix
    return str(folder or dataset.data_root)


def _names(classes: Sequence[str]) -> str:
    """The first class names, for a message."""
    names = ', '.join(map(str, classes[:SHOWN_NAMES]))
    return names + (', ...' if len(classes) > SHOWN_NAMES else '')


@HOOKS.register_module()
class ClassCountCheckHook(Hook):
    """Before training, validation and testing, compare the number of
    classes of each data set (``len(dataset.metainfo['classes'])``, e.g. the
    class folders MMPretrain's ``CustomDataset`` found) with the class counts
    of the model (see :func:`class_counts`); before training, also the
    validation set's class names with the training set's (folders are
    numbered in sorted order, so a missing or misspelt folder would shift
    the labels).

    The validation and test evaluators' top-k accuracies must not ask for
    more classes than there are.

    A data set without ``classes`` (unlabelled pretraining images) is not
    checked. The check reads metadata only, once per loop start.

    Raises:
        ValueError: naming the data set's folder, its class count and first
            class names, the config keys to set and the value; or both
            folders and the first class names that differ.
    """
    priority = 'VERY_HIGH'  # before hooks that might use the labels

    def before_train(self, runner) -> None:
        train = runner.train_loop.dataloader.dataset
        # the validation loop is built by now: fail before training for it
        val_loop = runner.val_loop
        if val_loop is not None:
            self._check_same_classes(train, val_loop.dataloader.dataset)
        self._check(runner, 'train', train,
                    {'val': val_loop} if val_loop is not None else {})

    def before_val(self, runner) -> None:
        self._check(runner, 'val', runner.val_loop.dataloader.dataset,
                    {'val': runner.val_loop})

    def before_test(self, runner) -> None:
        self._check(runner, 'test', runner.test_loop.dataloader.dataset,
                    {'test': runner.test_loop})

    @staticmethod
    def _check(runner, split: str, dataset: BaseDataset,
               loops: Dict[str, BaseLoop]) -> None:
        """Compare ``dataset``'s classes with the model's class counts and
        the top-k of the evaluators of ``loops`` (``'val'`` / ``'test'``)."""
        classes: Optional[Sequence[str]] = dataset.metainfo.get('classes')
        if classes is None:
            return
        count = len(classes)
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        preprocessor_key = 'model.data_preprocessor' \
            if 'data_preprocessor' in runner.cfg.get('model', {}) \
            else 'data_preprocessor'
        fixes = [(key, value, count)
                 for key, value in class_counts(model, preprocessor_key)
                 if value != count]
        # an Accuracy(topk=5) over fewer classes would fail only after a
        # whole validation epoch
        for name, loop in loops.items():
            for metric in getattr(loop.evaluator, 'metrics', ()):
                topk = getattr(metric, 'topk', None)
                topk = (topk, ) if isinstance(topk, int) else \
                    tuple(topk or ())
                if topk and max(topk) > count:
                    fixes.append((f'{name}_evaluator.topk', topk,
                                  tuple(k for k in topk if k <= count)
                                  or (1, )))
        if not fixes:
            return
        raise ValueError(
            f'the {split} data set in {dataset_folder(dataset)} has {count} '
            f'classes ({_names(classes)}) but the config sets '
            + ', '.join(f'{key}={old}' for key, old, _ in fixes)
            + f': set num_classes = {count} at the top of the config, or '
            'pass --cfg-options '
            + ' '.join(f'"{key}={new}"' for key, _, new in fixes))

    @staticmethod
    def _check_same_classes(train: BaseDataset, val: BaseDataset) -> None:
        names = [d.metainfo.get('classes') for d in (train, val)]
        if None in names or list(names[0]) == list(names[1]):
            return
        first = next((i for i, (a, b) in enumerate(zip(*names)) if a != b),
                     min(map(len, names)))
        raise ValueError(
            f'the validation classes in {dataset_folder(val)} '
            f'({_names(names[1][first:])} from class {first}) are not the '
            f'training classes in {dataset_folder(train)} '
            f'({_names(names[0][first:])} from class {first}): both need '
            'the same class folders')
