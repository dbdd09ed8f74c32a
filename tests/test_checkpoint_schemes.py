"""Checkpoints from URLs and other schemes never run code when loaded.

A malicious checkpoint is served from a local ``http.server`` on 127.0.0.1
and loaded through each entry point: MMEngine's ``CheckpointLoader``, a
``Pretrained`` ``init_cfg``, ``Runner.load_checkpoint`` (``tools/test.py``,
``load_from``), ``Runner.resume`` (``--resume``), and ``tools/test.py`` in a
process of its own. Its payload would create a file; the file must never
appear, not on the download and not on the second load from the hub cache.
"""
import functools
import http.server
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import CheckpointLoader

from beit_plugin import compat
from beit_plugin.checkpoint_schemes import UnsupportedCheckpointScheme
from compat_toys import ToyModel
from helpers import ROOT, TOY_CONFIG, CreatesFile, make_runner, run


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``(folder, base URL)``: files put in the folder are served over
    HTTP from 127.0.0.1; torch's hub cache is a fresh folder."""
    folder = tmp_path / 'www'
    folder.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # re-read TORCH_HOME

    class Quiet(http.server.SimpleHTTPRequestHandler):

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


@pytest.fixture
def evil(served, tmp_path: Path):
    """``(URL, payload marker)`` of a checkpoint whose unpickling would
    create the marker file."""
    folder, base = served
    marker = tmp_path / 'pwned'
    torch.save(dict(state_dict=ToyModel().state_dict(),
                    meta=CreatesFile(marker)), folder / 'evil.pth')
    return f'{base}/evil.pth', marker


def _assert_refused(err: pytest.ExceptionInfo, marker: Path) -> None:
    message = str(err.value)
    assert 'http://127.0.0.1:' in message and 'evil.pth' in message
    assert 'GLOBAL io.open' in message  # torch's line naming the global
    assert 'weights_only=False' not in message
    assert not marker.exists()


def test_url_checkpoint_never_runs_code(evil) -> None:
    url, marker = evil
    for _ in range(2):  # downloaded, then from torch's hub cache
        with pytest.raises(compat.UnsafeCheckpointError) as err:
            CheckpointLoader.load_checkpoint(url, map_location='cpu')
        _assert_refused(err, marker)
    cached = Path(torch.hub.get_dir(), 'checkpoints', 'evil.pth')
    assert cached.is_file()
    torch.load(cached, weights_only=False)  # the payload is live
    assert marker.exists()


def test_url_pretrained_init_is_refused(evil) -> None:
    url, marker = evil
    model = ToyModel()
    model.init_cfg = dict(type='Pretrained', checkpoint=url)
    with pytest.raises(compat.UnsafeCheckpointError) as err:
        model.init_weights()
    _assert_refused(err, marker)


def test_url_load_from_and_resume_are_refused(evil, tmp_path: Path) -> None:
    url, marker = evil
    with DefaultScope.overwrite_default_scope('mmengine'):
        for resume in (False, True):
            runner = make_runner(tmp_path / f'resume_{resume}',
                                 load_from=url, resume=resume)
            with pytest.raises(compat.UnsafeCheckpointError) as err:
                runner.load_or_resume()
            _assert_refused(err, marker)


@pytest.mark.slow
def test_test_tool_refuses_a_url_checkpoint(evil, tmp_path: Path) -> None:
    url, marker = evil
    config = tmp_path / 'toy_cfg.py'
    config.write_text(TOY_CONFIG)
    result = run([sys.executable, str(ROOT / 'tools' / 'test.py'),
                  str(config), url], tmp_path,
                 TORCH_HOME=str(tmp_path / 'torch_home'))
    assert result.returncode != 0
    assert 'UnsafeCheckpointError' in result.stderr
    assert 'GLOBAL io.open' in result.stderr
    assert not marker.exists()


def test_url_runner_checkpoint_loads(served, tmp_path: Path) -> None:
    """The safe path is a working one: a runner checkpoint (message hub,
    numpy state) loads from a URL, and again from the cache."""
    folder, base = served
    with DefaultScope.overwrite_default_scope('mmengine'):
        make_runner(tmp_path / 'run').train()
    (folder / 'iter_4.pth').write_bytes(
        (tmp_path / 'run' / 'iter_4.pth').read_bytes())
    expected = compat.safe_torch_load(tmp_path / 'run' / 'iter_4.pth', 'cpu')
    for _ in range(2):
        loaded = CheckpointLoader.load_checkpoint(f'{base}/iter_4.pth',
                                                  map_location='cpu')
        torch.testing.assert_close(loaded['state_dict'],
                                   expected['state_dict'])
        assert loaded['meta']['iter'] == 4


@pytest.mark.parametrize('name', [
    'torchvision://resnet50', 'modelzoo://resnet50',
    'open-mmlab://resnet50_v1c', 'openmmlab://resnet50_v1c',
    'mmcls://resnet50', 'pavi://model'])
def test_model_zoo_schemes_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedCheckpointScheme,
                       match='Pass the local path or the URL') as err:
        CheckpointLoader.load_checkpoint(name, map_location='cpu')
    assert name in str(err.value)


def test_mmengine_http_loader_runs_the_payload(evil) -> None:
    """The fault the loaders above replace: MMEngine's own http loader."""
    from mmengine.runner.checkpoint import load_from_http
    url, marker = evil
    load_from_http(url, map_location='cpu')
    assert marker.exists()
