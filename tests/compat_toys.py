"""Tiny runner components for tests/test_compat.py.

Configs refer to them by import path (``type='compat_toys.ToyModel'``), which
MMEngine's registries resolve without registration.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import get_rank, get_world_size
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.runner import Runner
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """Eight deterministic samples: 4 features, a label in {0, 1}."""

    metainfo = dict(classes=('a', 'b'))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        inputs = torch.randn(4, generator=torch.Generator().manual_seed(index))
        return dict(inputs=inputs, label=torch.tensor(index % 2))


class ToyModel(BaseModel):
    """A linear classifier, in MMEngine's ``BaseModel`` form."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self,
                inputs: torch.Tensor,
                label: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        logits = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits.float(), label))
        if mode == 'predict':
            return [
                dict(pred=p, label=t)
                for p, t in zip(logits.argmax(dim=1), label)
            ]
        return logits


class ToyAccuracy(BaseMetric):
    """Accuracy of :class:`ToyModel` predictions."""

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        self.results.extend(
            float(s['pred'] == s['label']) for s in data_samples)

    def compute_metrics(self, results: List[float]) -> Dict[str, float]:
        return dict(accuracy=sum(results) / len(results))


class ParamDumpHook(Hook):
    """After the run, save this rank's parameters and the world size."""

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        torch.save(
            dict(world_size=get_world_size(), state_dict=model.state_dict()),
            f'{runner.work_dir}/params_rank{get_rank()}.pth')


class ToyRunner(Runner):
    """A ``Runner`` subclass, to check that ``runner_type`` is respected."""
