"""Tests of ``tools/visualize_tokens.py``."""
import json
import math
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from beit_plugin.models.tokenizers import DALLEEncoder, VQKDTokenizer
from helpers import TINY_ARCH, load_tool, randomise

VOCAB = 16
SIZE = 32  # tokenizer input: a 4 x 4 token grid
DEAD = [12, 13, 14, 15]  # copies of codes 0-3, which win the ties


def _vqkd():
    torch.manual_seed(0)
    # the encoder's own input size is 16 px: the tool must take the
    # config's second_size (32) instead
    tokenizer = VQKDTokenizer(
        encoder=dict(arch=TINY_ARCH, img_size=16, patch_size=8),
        num_embed=VOCAB, embed_dims=8, kmeans_init=False)
    randomise(tokenizer.encoder)
    randomise(tokenizer.encode_task_layer)
    for layer in tokenizer.encode_task_layer[::2]:  # the Linear layers
        torch.nn.init.zeros_(layer.bias)  # (a common offset: fewer codes)
    codebook = tokenizer.quantize.embedding.weight
    codebook[DEAD] = codebook[:len(DEAD)].clone()
    return tokenizer


def _dalle():
    torch.manual_seed(0)
    return DALLEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=VOCAB)


def _write_images(folder):
    """Six random 32 px images (one in a subfolder) and a text file."""
    rng = np.random.default_rng(0)
    (folder / 'sub').mkdir(parents=True)
    paths = [folder / f'{i}.png' for i in range(5)]
    paths.append(folder / 'sub' / '5.png')
    for path in paths:
        # 4 px blocks: a little structure for the tokens
        blocks = rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3), np.uint8)
        cv2.imwrite(str(path), np.kron(blocks, np.ones((4, 4, 1), np.uint8)))
    (folder / 'notes.txt').write_text('not an image')
    return sorted(paths)


def _hand_ids(tokenizer, path):
    """The token ids of one image, ``(4, 4)``, computed here."""
    rgb = cv2.imread(str(path))[..., ::-1].astype(np.float32)
    norm = tokenizer.input_norm
    x = (rgb - np.float32(norm['mean'])) / np.float32(norm['std'])
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        return tokenizer.get_codebook_indices(x)[0].view(4, 4).numpy()


@pytest.mark.parametrize('kind', ['vqkd-pretraining-config',
                                  'dalle-tokenizer-config'])
def test_token_maps_and_codebook_statistics(tmp_path, kind):
    images = _write_images(tmp_path / 'images')
    state = tmp_path / 'tokenizer.pth'
    if kind.startswith('vqkd'):
        tokenizer = _vqkd()
        torch.save({'state_dict': tokenizer.state_dict()}, state)
        config = tmp_path / 'pretrain.py'
        config.write_text(f"""
default_scope = 'beit_plugin'
model = dict(
    type='beit_plugin.BEiTPretrainer',
    target_generator=dict(
        type='beit_plugin.VQKDTokenizer',
        encoder=dict(arch={TINY_ARCH!r}, img_size=16, patch_size=8),
        num_embed={VOCAB}, embed_dims=8, frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint={str(state)!r})))
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='RandomResizedCropAndInterpolationWithTwoPic', size=48,
         second_size={SIZE})]))
""")
        # the weights from the init_cfg
        extra = []
    else:
        tokenizer = _dalle()
        # a pretraining checkpoint holding the tokenizer
        torch.save({'state_dict': {
            **{f'target_generator.{k}': v
               for k, v in tokenizer.state_dict().items()},
            'backbone.cls_token': torch.zeros(1, 1, 8)}}, state)
        config = tmp_path / 'dalle.py'
        config.write_text(f"""
default_scope = 'beit_plugin'
model = dict(type='beit_plugin.DALLEEncoder', n_hid=8, n_blk_per_group=1,
             vocab_size={VOCAB})
""")
        extra = ['--checkpoint', str(state), '--size', str(SIZE)]
    tool = load_tool('visualize_tokens')
    out = tmp_path / 'out'
    stats = tool.main([str(config), str(tmp_path / 'images'), '--maps', '2',
                       '--out-dir', str(out), '--batch-size', '4', *extra])

    ids = {path: _hand_ids(tokenizer.eval(), path) for path in images}
    counts = Counter(int(i) for grid in ids.values() for i in grid.ravel())
    probs = np.array([n / (6 * 16) for n in counts.values()])
    expected = dict(
        images=6, tokens=6 * 16, vocab_size=VOCAB, codes_used=len(counts),
        usage=len(counts) / VOCAB,
        dead_codes=[c for c in range(VOCAB) if c not in counts],
        counts=[counts.get(c, 0) for c in range(VOCAB)])
    written = json.loads((out / 'codebook_stats.json').read_text())
    assert written == stats
    assert {k: written[k] for k in expected} == expected
    assert written['perplexity'] == pytest.approx(
        math.exp(-(probs * np.log(probs)).sum()))
    assert written['entropy'] == pytest.approx(-(probs * np.log(probs)).sum())
    if kind.startswith('vqkd'):
        assert set(DEAD) <= set(written['dead_codes'])
        assert written['codes_used'] >= 4  # enough for a meaningful count

    # token maps of the first and the last image (sorted), 7 x 32 = 224 px
    # tiles with 2 px of white around and between
    maps = sorted(out.glob('*_tokens.png'))
    assert [p.name for p in maps] == ['0_tokens.png', '5_tokens.png']
    colour_of = {}
    for picture_path, path in zip(maps, [images[0], images[-1]]):
        picture = cv2.imread(str(picture_path))
        assert picture.shape == (224 + 4, 2 * 224 + 6, 3)
        enlarged = cv2.resize(cv2.imread(str(path)), (224, 224),
                              interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(picture[2:226, 2:226], enlarged)
        token_map = picture[2:226, 228:452]
        assert len(np.unique(token_map.reshape(-1, 3), axis=0)) > 1
        # every patch one colour; equal colours are equal ids
        cells = token_map.reshape(4, 56, 4, 56, 3)
        assert (cells == cells[:, :1, :, :1]).all()
        for token, colour in zip(ids[path].ravel(),
                                 cells[:, 0, :, 0].reshape(16, 3)):
            colour_of.setdefault(int(token), tuple(colour))
            assert colour_of[int(token)] == tuple(colour)
    assert len(set(colour_of.values())) == len(colour_of)
    assert len(colour_of) > 1

    usage = cv2.imread(str(out / 'codebook_usage.png'))
    assert usage.shape == (600, 800, 3)
    assert len(np.unique(usage.reshape(-1, 3), axis=0)) > 10


def test_a_checkpoint_without_the_tokenizer_is_refused(tmp_path):
    _write_images(tmp_path / 'images')
    state = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.cls_token': torch.zeros(1)}}, state)
    config = tmp_path / 'dalle.py'
    config.write_text(f"""
model = dict(type='beit_plugin.DALLEEncoder', n_hid=8, n_blk_per_group=1,
             vocab_size={VOCAB})
""")
    tool = load_tool('visualize_tokens')
    with pytest.raises(ValueError, match='has no weights for'):
        tool.main([str(config), str(tmp_path / 'images'), '--checkpoint',
                   str(state), '--size', '32', '--out-dir',
                   str(tmp_path / 'out')])
    with pytest.raises(ValueError, match='give --checkpoint'):
        tool.main([str(config), str(tmp_path / 'images'), '--size', '32'])
    good = tmp_path / 'dalle.pth'
    torch.save(_dalle().state_dict(), good)
    with pytest.raises(ValueError, match='give --size'):
        tool.main([str(config), str(tmp_path / 'images'), '--checkpoint',
                   str(good)])
