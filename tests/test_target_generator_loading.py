"""A frozen target generator never trains on random targets: it needs a
``Pretrained`` init_cfg, loads it strictly, and refuses a codebook that
k-means never initialised."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers import DALLEEncoder, VQKDTokenizer
from beit_plugin.registry import MODELS
from helpers import ROOT, TINY_ARCH

ENCODER = dict(arch=TINY_ARCH, img_size=32, patch_size=8)


def vqkd(**kwargs) -> VQKDTokenizer:
    return VQKDTokenizer(encoder=ENCODER, num_embed=16, embed_dims=8,
                         **kwargs)


def save(module: torch.nn.Module, path: Path) -> str:
    torch.save({'state_dict': module.state_dict()}, path)
    return str(path)


def pretrained(path: str) -> dict:
    return dict(type='Pretrained', checkpoint=path)


def test_frozen_without_weights_is_refused() -> None:
    with pytest.raises(ValueError, match='frozen target generator without '
                       r'weights \(init_cfg=None\)'):
        vqkd(frozen=True).init_weights()
    vqkd(frozen=False).init_weights()  # a tokenizer to train: MMEngine's init


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    other = save(BEiT(**ENCODER), tmp_path / 'backbone.pth')
    with pytest.raises(ValueError) as err:
        vqkd(frozen=True, init_cfg=pretrained(other)).init_weights()
    message = str(err.value)
    assert message.startswith(f'{other} is not a checkpoint of this '
                              'VQKDTokenizer')
    # every tensor of the tokenizer is missing, every one of the file is not
    assert f'({len(vqkd().state_dict())} in all); unexpected' in message
    assert f'({len(torch.load(other)["state_dict"])} in all)' in message


def test_a_partial_checkpoint_is_refused(tmp_path: Path) -> None:
    state = DALLEEncoder(n_hid=4, n_blk_per_group=1, vocab_size=16,
                         frozen=False).state_dict()
    dropped = sorted(state)[0]
    del state[dropped]
    path = tmp_path / 'partial.pth'
    torch.save({'state_dict': state}, path)
    tokenizer = DALLEEncoder(n_hid=4, n_blk_per_group=1, vocab_size=16,
                             init_cfg=pretrained(str(path)))
    with pytest.raises(ValueError, match=f"missing \\['{dropped}'\\]"):
        tokenizer.init_weights()


def test_a_codebook_never_initialised_is_refused(tmp_path: Path) -> None:
    fresh = save(vqkd(kmeans_init=True), tmp_path / 'fresh.pth')  # initted 0
    with pytest.raises(ValueError, match='never initialised'):
        vqkd(frozen=True, init_cfg=pretrained(fresh)).init_weights()


def test_a_matching_checkpoint_loads_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = vqkd(kmeans_init=False)
    path = save(source, tmp_path / 'tokenizer.pth')
    torch.manual_seed(1)
    tokenizer = vqkd(frozen=True, init_cfg=pretrained(path))
    tokenizer.init_weights()
    torch.testing.assert_close(tokenizer.state_dict(), source.state_dict(),
                               rtol=0, atol=0)
    assert tokenizer.is_init


def test_the_embedded_default_refuses_init_cfg_none() -> None:
    """What the Runner does first (model.init_weights) stops a pretraining
    whose tokenizer has no weights."""
    cfg = Config.fromfile(ROOT / 'configs' / 'beit_pretrain.py')
    model = copy.deepcopy(cfg.model)
    model.target_generator.init_cfg = None
    with pytest.raises(ValueError, match='VQKDTokenizer is a frozen target'):
        MODELS.build(model).init_weights()
    MODELS.build(cfg.model).init_weights()  # the shipped demo tokenizer
