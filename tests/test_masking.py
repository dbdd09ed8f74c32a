"""Tests of ``BlockwiseMaskGenerator``."""
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, worker_init_fn
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, set_random_seed
from scipy import ndimage, stats
from torch.utils.data import Dataset, get_worker_info

from beit_plugin.datasets.transforms import BlockwiseMaskGenerator
from beit_plugin.registry import TRANSFORMS
from helpers import ROOT, load_tool

#: BEiT's reference loop, written plainly and kept out of the package: the
#: copy in tools/benchmark_masking.py, which the benchmark times.
ReferenceMaskingGenerator = load_tool(
    'benchmark_masking').ReferenceMaskingGenerator

N_MASKS = 3000
CASES = {
    'beit_v1': dict(input_size=14, num_masking_patches=75,
                    min_num_patches=16),
    'beit_v2': dict(input_size=14, num_masking_patches=75,
                    min_num_patches=16, fixed_count=True),
    'non_square': dict(input_size=(6, 10), num_masking_patches=20,
                       min_num_patches=4, max_num_patches=8, min_aspect=0.5,
                       max_aspect=3.0),
}


def _ours(kwargs, n=N_MASKS, seed=0):
    transform = BlockwiseMaskGenerator(**kwargs)
    np.random.seed(seed)
    return np.stack([transform({})['mask'] for _ in range(n)])


def _reference(kwargs, n=N_MASKS, seed=1):
    kwargs = dict(kwargs)
    if not isinstance(kwargs['input_size'], int):
        kwargs['input_size'] = tuple(kwargs['input_size'])
    generator = ReferenceMaskingGenerator(**kwargs)
    random.seed(seed)
    return np.stack([generator() for _ in range(n)]).astype(bool)


def _random_like(masks, seed=2):
    """Plain random masks with the same masked counts as ``masks``."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(masks)
    flat = out.reshape(len(masks), -1)
    for row, count in zip(flat, masks.reshape(len(masks), -1).sum(1)):
        row[rng.permutation(row.size)[:count]] = True
    return out


def _histogram_p(a, b):
    """Chi-square two-sample p-value of two samples of small integers.

    Values are pooled into bins of at least 10 observations in all.
    """
    values = np.union1d(a, b)
    if len(values) == 1:
        return 1.0
    table, current = [], np.zeros(2)
    for value in values:
        current += [(a == value).sum(), (b == value).sum()]
        if current.sum() >= 10:
            table.append(current)
            current = np.zeros(2)
    if len(table) == 0:
        return 1.0
    table[-1] = table[-1] + current
    if len(table) == 1:
        return 1.0
    return stats.chi2_contingency(np.array(table).T)[1]


def _position_p(a, b):
    """Bonferroni p-value of the largest per-patch frequency difference.

    Each patch is masked in a Binomial(n, p) number of independent masks in
    each sample; masks of one sample correlate patches, which Bonferroni
    allows for.
    """
    fa, fb = a.mean(0).ravel(), b.mean(0).ravel()
    pooled = (fa + fb) / 2
    std = np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
    z = np.abs(fa - fb) / np.maximum(std, 1e-12)
    return min(1.0, fa.size * 2 * stats.norm.sf(z.max()))


def _components(masks):
    """Number of 4-connected masked regions of each mask."""
    return np.array([ndimage.label(mask)[1] for mask in masks])


def _p_values(a, b):
    return dict(
        count=_histogram_p(a.sum((1, 2)), b.sum((1, 2))),
        position=_position_p(a, b),
        blocks=_histogram_p(_components(a), _components(b)))


@pytest.mark.parametrize('case', CASES)
def test_same_distribution_as_reference(case):
    reference = _reference(CASES[case])
    ours = _ours(CASES[case])
    assert ours.shape == reference.shape
    assert ours.dtype == bool
    p = _p_values(ours, reference)
    assert min(p.values()) > 1e-3, p

    # the same tests reject random masks with the reference's counts
    p = _p_values(_random_like(reference), reference)
    assert p['position'] < 1e-6, p
    assert p['blocks'] < 1e-6, p
    # and the count test tells v1's shortfall from an exact count
    if not CASES[case].get('fixed_count'):
        exact = np.full(N_MASKS, CASES[case]['num_masking_patches'])
        assert _histogram_p(exact, reference.sum((1, 2))) < 1e-6


def test_counts_and_fixed_count():
    v1 = _ours(CASES['beit_v1'], n=500).sum((1, 2))
    assert v1.max() <= 75
    assert (v1 < 75).any()  # v1 keeps the shortfall
    v2 = _ours(CASES['beit_v2'], n=500).sum((1, 2))
    assert (v2 == 75).all()
    masks = _ours(dict(input_size=(6, 10), num_masking_patches=20,
                       mask_mode='random'), n=200)
    assert masks.shape == (200, 6, 10)
    assert (masks.sum((1, 2)) == 20).all()
    # random masks are scattered, blockwise ones are not
    assert _components(masks).mean() > 2 * _components(
        _ours(dict(input_size=(6, 10), num_masking_patches=20), n=200)).mean()


def test_block_geometry_follows_reference():
    # blocks must be strictly smaller than the grid: no block fits one row
    flat = BlockwiseMaskGenerator((1, 8), 4, min_num_patches=1)
    assert not flat({})['mask'].any()
    topped_up = BlockwiseMaskGenerator((1, 8), 4, min_num_patches=1,
                                       fixed_count=True)
    assert topped_up({})['mask'].sum() == 4
    # corners are drawn inclusively: the last row and column get masked
    masks = _ours(dict(input_size=(5, 7), num_masking_patches=6,
                       min_num_patches=4), n=300)
    assert masks[:, -1, :].any() and masks[:, :, -1].any()


def test_mask_ratio():
    assert BlockwiseMaskGenerator(
        14, mask_ratio=0.4).num_masking_patches == 78
    transform = BlockwiseMaskGenerator((6, 10), mask_ratio=0.5,
                                       fixed_count=True)
    assert transform({})['mask'].sum() == 30
    assert BlockwiseMaskGenerator(4, mask_ratio=1.0,
                                  fixed_count=True)({})['mask'].all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(input_size=14, num_masking_patches=197),
     'num_masking_patches .*197'),
    (dict(input_size=14, num_masking_patches=-1), 'num_masking_patches .*-1'),
    (dict(input_size=0, num_masking_patches=1), 'input_size .*0'),
    (dict(input_size=(14, -2), num_masking_patches=1), 'input_size .*-2'),
    (dict(input_size=(1, 2, 3), num_masking_patches=1), r'input_size .*\(1'),
    (dict(input_size=14, num_masking_patches=75, min_aspect=2.0,
          max_aspect=1.0), 'min_aspect=2.0 > max_aspect=1.0'),
    (dict(input_size=14, num_masking_patches=75, min_aspect=0),
     'min_aspect .*0'),
    (dict(input_size=14, num_masking_patches=75, min_num_patches=0),
     'min_num_patches .*0'),
    (dict(input_size=14, num_masking_patches=75, max_num_patches=0),
     'max_num_patches .*0'),
    (dict(input_size=14, mask_ratio=1.5), 'mask_ratio .*1.5'),
    (dict(input_size=14), 'exactly one'),
    (dict(input_size=14, num_masking_patches=75, mask_ratio=0.4),
     'exactly one'),
    (dict(input_size=14, num_masking_patches=75, mask_mode='grid'),
     "mask_mode .*'grid'"),
])
def test_bad_arguments_raise_at_build(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TRANSFORMS.build(
            dict(type='beit_plugin.BlockwiseMaskGenerator', **kwargs))


def test_packed_for_the_model():
    init_default_scope('beit_plugin')
    mask_cfg = dict(type='BlockwiseMaskGenerator', input_size=(6, 10),
                    num_masking_patches=20)
    image = np.zeros((96, 160, 3), np.uint8)
    for pack in (dict(type='PackInputs'),
                 dict(type='PackInputs', algorithm_keys=['mask'])):
        np.random.seed(0)
        packed = Compose([mask_cfg, pack])(dict(img=image.copy()))
        np.random.seed(0)
        expected = TRANSFORMS.build(mask_cfg)({})['mask']
        carried = packed['data_samples'].mask
        assert tuple(carried.shape) == (6, 10)
        assert np.array_equal(np.asarray(carried), expected)
    # the default packing gives the tensor BEiT stacks into (B, H, W)
    np.random.seed(0)
    packed = Compose([mask_cfg, dict(type='PackInputs')])(dict(img=image))
    mask = packed['data_samples'].mask
    assert mask.dtype == torch.bool
    assert torch.stack([mask, mask]).shape == (2, 6, 10)


def test_follows_mmengine_seed():
    transform = BlockwiseMaskGenerator(14, 75, min_num_patches=16)

    def draw(seed):
        set_random_seed(seed)
        return np.stack([transform({})['mask'] for _ in range(4)])

    assert np.array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


class _MaskDataset(Dataset):

    def __init__(self):
        self.transform = BlockwiseMaskGenerator(14, 75, min_num_patches=16)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(mask=self.transform({})['mask'],
                    worker=get_worker_info().id)


def test_dataloader_workers_are_seeded():

    def load(seed):
        loader = Runner.build_dataloader(
            dict(batch_size=1, num_workers=2, dataset=_MaskDataset(),
                 sampler=dict(type='DefaultSampler', shuffle=False)),
            seed=seed)
        return [{key: value[0] for key, value in batch.items()}
                for batch in loader]

    first, again, other = load(0), load(0), load(1)
    assert [item['worker'] for item in first] == [0, 1, 0, 1]
    for a, b in zip(first, again):
        assert np.array_equal(a['mask'], b['mask'])
    # each worker draws its own masks, and a worker's first mask is the one
    # MMEngine's worker seed (seed + rank * num_workers + worker_id) gives
    assert not np.array_equal(first[0]['mask'], first[1]['mask'])
    assert not np.array_equal(first[0]['mask'], other[0]['mask'])
    for worker_id in (0, 1):
        worker_init_fn(worker_id, num_workers=2, rank=0, seed=0)
        expected = _MaskDataset().transform({})['mask']
        assert np.array_equal(first[worker_id]['mask'], expected)


V2_CONFIGS = sorted((ROOT / 'configs' / 'beitv2').glob('*.py')) + sorted(
    (ROOT / 'configs' / 'own_data').glob('beitv2*.py'))


@pytest.mark.parametrize('config', V2_CONFIGS, ids=lambda p: p.stem)
def test_every_v2_recipe_masks_exactly_75_patches(config):
    """The official BEiT v2 generator always masks ``num_masking_patches``
    (75 of 196): 2000 draws of each v2 config's mask generator."""
    pipeline = Config.fromfile(config).train_dataloader.dataset.pipeline
    mask_cfg = next(t for t in pipeline if 'MaskGenerator' in t['type'])
    generator = TRANSFORMS.build(mask_cfg)
    set_random_seed(0)
    counts = {int(generator({})['mask'].sum()) for _ in range(2000)}
    assert counts == {75}
