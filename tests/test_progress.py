"""Progress bars of the long loops: on a terminal only."""
import io
import sys

import torch

from beit_plugin.datasets.demo_data import make_demo_data
from beit_plugin.evaluation import block_features
from beit_plugin.models.backbones import BEiT
from beit_plugin.progress import track
from helpers import TINY_ARCH


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_track_yields_everything_and_draws_only_on_a_terminal():
    pipe = io.StringIO()
    assert list(track(range(3), 'counting', file=pipe)) == [0, 1, 2]
    assert pipe.getvalue() == ''
    terminal = Terminal()
    assert list(track(iter('abc'), 'counting', total=3,
                      file=terminal)) == ['a', 'b', 'c']
    assert 'counting' in terminal.getvalue()
    assert '3/3' in terminal.getvalue()


def test_demo_data_and_probe_features_report_progress_on_a_terminal(
        tmp_path, monkeypatch, capsys):
    counts = dict(cls_train=3, cls_val=1, seg_train=2, seg_val=1)
    make_demo_data(tmp_path / 'quiet', **counts)
    backbone = BEiT(arch=TINY_ARCH, img_size=16, patch_size=8,
                    out_indices=(0, 1))
    block_features(backbone, torch.zeros(3, 3, 16, 16), batch_size=2)
    assert capsys.readouterr() == ('', '')  # not a terminal: silent

    terminal = Terminal()
    monkeypatch.setattr(sys, 'stderr', terminal)
    make_demo_data(tmp_path / 'shown', **counts)
    block_features(backbone, torch.zeros(3, 3, 16, 16), batch_size=2)
    shown = terminal.getvalue()
    for line in ('demo data imagenet/train', 'demo data ade/training',
                 'block features'):
        assert line in shown
    assert '3/3' in shown and '2/2' in shown  # 3 train images, 2 batches
