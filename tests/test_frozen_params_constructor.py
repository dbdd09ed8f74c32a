"""FrozenParamsOptimWrapperConstructor: the default constructor's optimizer,
with one log line for the frozen parameters instead of one warning each."""
from typing import Iterator, List

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from beit_plugin.engine.optimizers import FrozenParamsOptimWrapperConstructor
from beit_plugin.registry import OPTIM_WRAPPER_CONSTRUCTORS
from helpers import mmengine_log

OPTIM_WRAPPER = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
PARAMWISE = dict(norm_decay_mult=0., bias_decay_mult=0.,
                 custom_keys={'gamma': dict(decay_mult=0.)})


class Student(nn.Module):
    """A trainable part and a frozen "tokenizer" with nested modules."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.gamma = nn.Parameter(torch.ones(4))
        self.tokenizer = nn.Sequential(nn.Linear(4, 3), nn.Sequential(
            nn.Linear(3, 2)))
        self.tokenizer.requires_grad_(False)


@pytest.fixture
def logged() -> Iterator[List[str]]:
    """What the constructors log, to a logger of this test's own."""
    MMLogger.get_instance('test_frozen_params_constructor')  # now current
    with mmengine_log() as messages:
        yield messages


def groups(optim_wrapper) -> List[tuple]:
    """Each parameter group as (parameter ids, lr, weight decay)."""
    return [(tuple(id(p) for p in group['params']), group['lr'],
             group['weight_decay'])
            for group in optim_wrapper.optimizer.param_groups]


def test_same_optimizer_and_one_line_for_the_frozen_parameters(logged):
    model = Student()
    default = DefaultOptimWrapperConstructor(dict(OPTIM_WRAPPER),
                                             PARAMWISE)(model)
    warnings = [m for m in logged if 'requires_grad=False' in m]
    assert len(warnings) == 4  # the default: one per frozen tensor
    logged.clear()

    ours = FrozenParamsOptimWrapperConstructor(dict(OPTIM_WRAPPER),
                                               PARAMWISE)(model)

    assert groups(ours) == groups(default)
    optimised = {p for g in ours.optimizer.param_groups for p in g['params']}
    assert not optimised & set(model.tokenizer.parameters())
    assert [m for m in logged if 'requires_grad' in m] == [
        'Not optimised (requires_grad=False): tokenizer (4)']


def test_silent_when_nothing_is_frozen_and_warnings_pass_through(logged):
    model = Student().backbone
    logger = MMLogger.get_current_instance()

    class Warns(FrozenParamsOptimWrapperConstructor):

        def add_params(self, params, module, **kwargs):
            logger.warning('an unrelated warning')
            super().add_params(params, module, **kwargs)

    Warns(dict(OPTIM_WRAPPER), PARAMWISE)(model)
    assert logged.count('an unrelated warning') >= 1
    assert not [m for m in logged if 'requires_grad' in m]
    assert logger.filters == []  # the filter is removed again


def test_the_pretraining_configs_use_it():
    for path in ('configs/beit_pretrain.py',
                 'configs/ablations/beit_demo_pretrain_pixel.py',
                 'configs/beitv2/beitv2_vit-large-p16_8xb256-amp-coslr-1600e_in1k.py',
                 'configs/beit/beit_vit-base-p16_8xb256-amp-coslr-800e_in1k.py',
                 'configs/vqkd/vqkd_vit-base-p16_dino-teacher_in1k.py'):
        constructor = Config.fromfile(path).optim_wrapper.constructor
        assert OPTIM_WRAPPER_CONSTRUCTORS.get(constructor) is \
            FrozenParamsOptimWrapperConstructor, path
