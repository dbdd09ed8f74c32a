"""Checkpoint conversion: the official (microsoft/unilm) layouts, refusal of
the wrong kind of file, validation, and tools/convert_checkpoint.py.

No unilm package exists: official state dicts are built from tiny timm
models (timm's backbone names are the official ones) plus the entries only
the official models have (mask token, index buffers, ``lm_head``, v2's
``cls_pt_layers``, VQ-KD's codebook and task layers), with random values
everywhere."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import ImageClassifier
from timm.models.beit import Beit

from beit_plugin.convert import (backbone_kwargs, convert_state_dict,
                                 dalle_target, under, validate_state_dict,
                                 vqkd_target, with_prefix)
from beit_plugin.compat import safe_torch_load
from beit_plugin.models.algorithms import BEiTPretrainer
from beit_plugin.models.backbones import BEiT
from beit_plugin.models.tokenizers import DALLEEncoder, VQKDTokenizer
from helpers import ROOT, TINY_ARCH, CreatesFile, load_tool, randomise

IMG, PATCH, GRID = 32, 8, 4
DIMS = TINY_ARCH['embed_dims']
VOCAB, CODE_DIMS, TEACHER_DIMS = 40, 8, 24


def timm_beit(**kwargs) -> Beit:
    """A tiny random timm BEiT shaped as :data:`TINY_ARCH`: a pretraining
    backbone unless told otherwise (shared relative position bias, layer
    scale, final norm, no head)."""
    cfg = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIMS,
               depth=TINY_ARCH['num_layers'],
               num_heads=TINY_ARCH['num_heads'],
               mlp_ratio=TINY_ARCH['feedforward_channels'] / DIMS,
               num_classes=0, global_pool='token', use_abs_pos_emb=False,
               use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
               init_values=0.1)
    cfg.update(kwargs)
    return randomise(Beit(**cfg)).eval()


def official_pretraining(v2: bool) -> dict:
    """``{'model': ...}`` as the official pretraining scripts save it."""
    state = dict(timm_beit().state_dict())
    state['mask_token'] = torch.randn(1, 1, DIMS)
    state['rel_pos_bias.relative_position_index'] = torch.zeros(
        GRID * GRID + 1, GRID * GRID + 1, dtype=torch.long)
    state['lm_head.weight'] = torch.randn(VOCAB, DIMS)
    state['lm_head.bias'] = torch.randn(VOCAB)
    if v2:  # two patch-aggregation blocks
        state.update(with_prefix(under(timm_beit().state_dict(), 'blocks.'),
                                 'cls_pt_layers.'))
    return {'model': state}


def tiny_pretrainer(v2: bool) -> BEiTPretrainer:
    neck = dict(type='BEiTV2PatchAggregation', embed_dims=DIMS,
                num_heads=TINY_ARCH['num_heads'],
                feedforward_channels=TINY_ARCH['feedforward_channels'],
                early_layers=1, backbone_layers=TINY_ARCH['num_layers'])
    return BEiTPretrainer(
        backbone=dict(type='BEiT', arch=TINY_ARCH, img_size=IMG,
                      patch_size=PATCH, use_mask_token=True,
                      use_shared_rel_pos_bias=True, final_norm=not v2,
                      out_indices=(0, -1) if v2 else -1),
        neck=neck if v2 else None,
        head=dict(type='BEiTMIMHead', in_channels=DIMS, num_embed=VOCAB),
        target_generator=DALLEEncoder(n_hid=4, vocab_size=VOCAB))


def official_name(key: str, v2: bool) -> str:
    """Where an official pretraining key belongs in our pretrainer."""
    for old, new in (('lm_head.', 'head.cls_head.'),
                     ('cls_pt_layers.', 'neck.cls_pt_layers.'),
                     ('norm.', 'neck.norm.' if v2 else 'backbone.norm.')):
        if key.startswith(old):
            return new + key[len(old):]
    return 'backbone.' + key


@pytest.mark.parametrize('v2', [False, True], ids=['v1', 'v2'])
def test_official_pretraining_lands_in_our_pretrainer(v2):
    official = official_pretraining(v2)
    converted = convert_state_dict(official, 'unilm', layout='model')
    expected = {official_name(k, v2): v for k, v in official['model'].items()
                if not k.endswith('relative_position_index')}
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert converted[key] is value, key

    pretrainer = tiny_pretrainer(v2)
    missing, unexpected = pretrainer.load_state_dict(converted, strict=False)
    assert unexpected == []
    assert missing and all(k.startswith('target_generator.') for k in missing)

    backbone = convert_state_dict(official, 'unilm')  # the official backbone
    assert torch.equal(backbone['norm.weight'],
                       official['model']['norm.weight'])
    assert not any(k.startswith(('neck', 'head', 'lm_head')) for k in backbone)


def test_official_backbone_output_equals_the_timm_model():
    official = official_pretraining(v2=False)
    model = BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                 use_mask_token=True).eval()
    model.load_state_dict(convert_state_dict(official, 'unilm'), strict=True)
    peer = timm_beit()
    peer.load_state_dict({k: v for k, v in official['model'].items()
                          if k.startswith(('cls_token', 'patch_embed',
                                           'rel_pos_bias.relative_position_'
                                           'bias_table', 'blocks', 'norm'))})
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], peer.forward_features(x),
                                   atol=1e-5, rtol=0)


def test_official_finetuned_classifier_gives_the_same_logits():
    peer = timm_beit(global_pool='avg', num_classes=5, use_rel_pos_bias=True,
                     use_shared_rel_pos_bias=False, use_abs_pos_emb=True)
    state = dict(peer.state_dict())  # the official fine-tuning layout
    for i in range(TINY_ARCH['num_layers']):
        state[f'blocks.{i}.attn.relative_position_index'] = torch.zeros(
            GRID * GRID + 1, GRID * GRID + 1, dtype=torch.long)
    converted = convert_state_dict({'model': state}, 'unilm', layout='model')
    model = ImageClassifier(
        backbone=BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                      out_type='avg_featmap', final_norm=False,
                      use_abs_pos_emb=True, use_rel_pos_bias=True,
                      use_shared_rel_pos_bias=False),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=DIMS))
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, mode='tensor'), peer(x),
                                   atol=1e-5, rtol=0)


def vqkd_vit(**kwargs) -> Beit:
    """The official VQ-KD ViT: absolute positions, no relative bias or layer
    scale, mean-pooling layout (``fc_norm`` is its final norm)."""
    return timm_beit(global_pool='avg', use_abs_pos_emb=True,
                     use_shared_rel_pos_bias=False, init_values=0., **kwargs)


def official_vqkd():
    """An official VQ-KD checkpoint (``beit2/modeling_vqkd.py`` with its
    ``norm_ema_quantizer``), with the training-only entries it may hold."""
    encoder = vqkd_vit()
    decoder = vqkd_vit(img_size=GRID, patch_size=1, in_chans=CODE_DIMS,
                       depth=1)
    encode = randomise(torch.nn.Sequential(
        torch.nn.Linear(DIMS, DIMS), torch.nn.Tanh(),
        torch.nn.Linear(DIMS, CODE_DIMS)))
    decode = randomise(torch.nn.Sequential(
        torch.nn.Linear(DIMS, DIMS), torch.nn.Tanh(),
        torch.nn.Linear(DIMS, TEACHER_DIMS)))
    codebook = F.normalize(torch.randn(VOCAB, CODE_DIMS), dim=1)
    state = {
        **with_prefix(encoder.state_dict(), 'encoder.'),
        **with_prefix(decoder.state_dict(), 'decoder.'),
        **with_prefix(encode.state_dict(), 'encode_task_layer.'),
        **with_prefix(decode.state_dict(), 'decode_task_layer.'),
        'quantize.embedding.weight': codebook,
        'quantize.embedding.cluster_size': torch.rand(VOCAB),
        'quantize.embedding.embed_avg': codebook.clone(),
        'quantize.embedding.initted': torch.ones(1),
        'quantize.cluster_size': torch.rand(VOCAB) * 10,
        'teacher_model.visual.proj': torch.randn(DIMS, TEACHER_DIMS),
        'scaling_layer.shift': torch.zeros(1, 3, 1, 1),
    }
    return state, encoder, decoder, encode, decode


def test_official_vqkd_gives_the_same_tokens_and_decoder_output():
    state, encoder, decoder, encode, decode = official_vqkd()
    converted = convert_state_dict({'model': state}, 'unilm', model='vqkd')
    assert not any(k.startswith(('teacher', 'scaling')) for k in converted)
    validate_state_dict(converted, vqkd_target(converted))
    ours = VQKDTokenizer(
        encoder=dict(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH),
        decoder=dict(arch=dict(TINY_ARCH, num_layers=1)),
        target_dims=TEACHER_DIMS, num_embed=VOCAB, embed_dims=CODE_DIMS,
        frozen=True)
    ours.load_state_dict(converted, strict=True)
    assert torch.equal(ours.encoder.norm.weight, encoder.fc_norm.weight)

    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        feats = encoder.fc_norm(encoder.forward_features(x)[:, 1:])
        codes = F.normalize(encode(feats), dim=-1)
        expected = (codes @ state['quantize.embedding.weight'].T).argmax(-1)
        assert torch.equal(ours.get_codebook_indices(x), expected)
        image = codes.transpose(1, 2).reshape(2, CODE_DIMS, GRID, GRID)
        rec = decode(decoder.fc_norm(decoder.forward_features(image)[:, 1:]))
        torch.testing.assert_close(ours.decode(codes, (GRID, GRID)), rec,
                                   atol=1e-5, rtol=0)


def openai_dalle_state() -> dict:
    """An OpenAI ``dall_e.Encoder`` state dict (``.w`` / ``.b``)."""
    model = randomise(DALLEEncoder(group_count=2, n_hid=8, n_blk_per_group=1,
                                   vocab_size=VOCAB))
    return {k.replace('.weight', '.w').replace('.bias', '.b'): v
            for k, v in model.state_dict().items()}


def test_openai_dalle_encoder_passes_through_and_validates():
    state = openai_dalle_state()
    converted = convert_state_dict(state, 'openai', model='dalle')
    assert converted == state
    target = dalle_target(converted)
    assert (target.vocab_size, target.downsample) == (VOCAB, 2)
    validate_state_dict(converted, target)
    target.load_state_dict(converted, strict=True)
    assert torch.equal(target.blocks.input.weight, state['blocks.input.w'])


# ---------------------------------------------------------------------------
# the wrong kind of file, validation
# ---------------------------------------------------------------------------


def refusal(state: dict, source: str, model: str) -> str:
    with pytest.raises(ValueError) as err:
        convert_state_dict(state, source, model=model)
    return str(err.value)


def test_vqkd_file_as_backbone_is_refused_in_one_line():
    assert refusal(official_vqkd()[0], 'unilm', 'beit') == (
        'checkpoint looks like a VQ-KD tokenizer in the official / timm '
        'layout (quantize.embedding.weight), not like a BEiT model: convert '
        "it with model='vqkd'")


def test_backbone_file_as_vqkd_is_refused_in_one_line():
    assert refusal(official_pretraining(v2=False), 'unilm', 'vqkd') == (
        'checkpoint looks like a BEiT model in the official / timm layout '
        "(blocks.0.attn.qkv.weight), not like a VQ-KD tokenizer: convert it "
        "with model='beit'")


def test_other_files_are_refused_saying_what_they_look_like():
    assert refusal(openai_dalle_state(), 'timm', 'beit').startswith(
        'checkpoint looks like a DALL-E encoder (blocks.group_1.')
    assert refusal({'fc.weight': torch.zeros(1)}, 'timm', 'beit') == (
        'checkpoint looks like nothing we know (not BEiT, VQ-KD or DALL-E; '
        'first keys: fc.weight), not like a BEiT model')
    ours = with_prefix(BEiT(arch=TINY_ARCH).state_dict(), 'backbone.')
    assert refusal(ours, 'timm', 'beit') == (
        "checkpoint looks like a BEiT model in beit_plugin's own layout "
        '(backbone.blocks.0.attn.proj.bias): it needs no conversion, load it '
        'as it is')
    assert refusal({}, 'timm', 'vqkd').startswith(
        "no converter from 'timm' for model 'vqkd'; supported: hf/beit, ")


def test_validation_lists_every_missing_unexpected_and_misshaped_key():
    model = BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state['blocks.1.gamma_2'], state['norm.bias']
    state['blocks.0.attn.k_bias'] = torch.zeros(DIMS)
    state['blocks.1.mlp.fc1.weight'] = torch.zeros(48, DIMS)
    given = dict(state)
    with pytest.raises(ValueError) as err:
        validate_state_dict(state, model, what='x.pth')
    assert str(err.value).splitlines() == [
        'checkpoint x.pth does not fit BEiT (4 problems):',
        '  missing blocks.1.gamma_2',
        '  missing norm.bias',
        '  unexpected blocks.0.attn.k_bias',
        '  mis-shaped blocks.1.mlp.fc1.weight: checkpoint (48, 32) vs model '
        '(64, 32)',
    ]
    assert state == given  # neither the state dict nor the model changed
    assert model.blocks[1].mlp.fc1.weight.shape == (64, 32)


def test_validation_accepts_what_our_backbone_adapts_on_loading():
    pretrained = BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH,
                      use_abs_pos_emb=True, use_shared_rel_pos_bias=True)
    finetune = dict(arch=TINY_ARCH, img_size=2 * IMG, patch_size=PATCH,
                    use_abs_pos_emb=True, use_rel_pos_bias=True,
                    use_shared_rel_pos_bias=False)
    # a shared table for one per block, at another grid: expanded, resized
    validate_state_dict(pretrained.state_dict(), BEiT(**finetune))
    four_heads = BEiT(arch=dict(TINY_ARCH, num_heads=4), img_size=IMG,
                      patch_size=PATCH, use_abs_pos_emb=True,
                      use_shared_rel_pos_bias=True)
    with pytest.raises(ValueError) as err:
        validate_state_dict(four_heads.state_dict(), BEiT(**finetune))
    assert err.value.args[0].splitlines()[1:] == [
        f'  mis-shaped blocks.{i}.attn.relative_position_bias_table: '
        f'checkpoint (228, 4) vs model (228, 2)'
        for i in range(TINY_ARCH['num_layers'])]


def test_architecture_is_read_off_the_weights():
    model = BEiT(arch=dict(TINY_ARCH, num_layers=3), img_size=48,
                 patch_size=PATCH, use_abs_pos_emb=True, use_rel_pos_bias=True,
                 use_shared_rel_pos_bias=False, out_type='avg_featmap',
                 final_norm=False, layer_scale_init_value=0.)
    kwargs = backbone_kwargs(model.state_dict())
    assert kwargs['arch'] == dict(TINY_ARCH, num_layers=3)
    assert kwargs['img_size'] == 48 and kwargs['out_type'] == 'avg_featmap'
    rebuilt = BEiT(**kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# tools/convert_checkpoint.py
# ---------------------------------------------------------------------------


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'convert_checkpoint.py'),
         *map(str, args)], capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)


def load_as_configured(path: Path, **kwargs) -> BEiT:
    """Our backbone loaded as our configs load a pretrained checkpoint."""
    model = BEiT(arch=TINY_ARCH, img_size=IMG, patch_size=PATCH, init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'),
        **kwargs)
    model.init_weights()
    return model.eval()


@pytest.mark.slow
def test_tool_converts_a_timm_checkpoint(tmp_path):
    peer = timm_beit(num_classes=5)
    torch.save(peer.state_dict(), tmp_path / 'timm.pth')
    done = run_tool(tmp_path / 'timm.pth', tmp_path / 'ours.pth', '--from',
                    'timm')
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f'{tmp_path / "ours.pth"}: {len(peer.state_dict())} tensors, '
        f'{sum(v.numel() for v in peer.state_dict().values()):,} values, '
        f'from {tmp_path / "timm.pth"} (timm); validated against BEiT '
        '(2 layers x 32, 2 heads, 32 px / 8) + head']
    saved = torch.load(tmp_path / 'ours.pth', weights_only=True)['state_dict']
    assert saved['head.fc.weight'].shape == (5, DIMS)
    model = load_as_configured(tmp_path / 'ours.pth')
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], peer.forward_features(x),
                                   atol=1e-5, rtol=0)


@pytest.mark.slow
def test_tool_converts_a_transformers_directory(tmp_path):
    from transformers import BeitConfig, BeitModel
    peer = randomise(BeitModel(BeitConfig(
        hidden_size=DIMS, num_hidden_layers=TINY_ARCH['num_layers'],
        num_attention_heads=TINY_ARCH['num_heads'],
        intermediate_size=TINY_ARCH['feedforward_channels'],
        image_size=IMG, patch_size=PATCH, layer_norm_eps=1e-6,
        use_relative_position_bias=True, use_mean_pooling=False))).eval()
    peer.save_pretrained(tmp_path / 'hf')
    done = run_tool(tmp_path / 'hf', tmp_path / 'ours.pth', '--from', 'hf',
                    '--backbone-only')
    assert done.returncode == 0, done.stderr
    model = load_as_configured(tmp_path / 'ours.pth', use_rel_pos_bias=True,
                               use_shared_rel_pos_bias=False)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], peer(x).last_hidden_state,
                                   atol=1e-5, rtol=0)


@pytest.mark.slow
def test_tool_reads_an_official_training_checkpoint_with_its_args(tmp_path):
    """The official training scripts save ``args`` (an argparse.Namespace)
    beside ``model``: the weights-only loader allows that type, so the file
    converts as it was downloaded, and its args come back as saved."""
    official = official_pretraining(v2=False)
    args = argparse.Namespace(model='beit_base_patch16_224_8k_vocab',
                              layer_scale_init_value=0.1, opt_betas=None,
                              lr=1.5e-3, drop_path=[0.1])
    torch.save({'model': official, 'epoch': 799, 'args': args},
               tmp_path / 'official.pth')
    loaded = safe_torch_load(tmp_path / 'official.pth')
    assert loaded['args'] == args
    done = run_tool(tmp_path / 'official.pth', tmp_path / 'ours.pth',
                    '--from', 'unilm')
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / 'ours.pth', weights_only=True)['state_dict']
    expected = convert_state_dict(official, 'unilm', layout='model')
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_tool_refuses_a_code_running_pickle_without_running_it(tmp_path):
    marker, evil = tmp_path / 'pwned', tmp_path / 'evil.pth'
    torch.save({'model': timm_beit().state_dict(),
                'args': CreatesFile(marker)}, evil)
    done = run_tool(evil, tmp_path / 'out.pth', '--from', 'unilm')
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]  # after library warnings
    assert message.startswith(f"convert_checkpoint: Refusing to load "
                              f"checkpoint '{evil}'")
    assert 'io.open' in message  # what CreatesFile's pickle calls
    assert 'Nothing was executed' in message
    assert 'weights_only=False' not in message  # never the advice
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()
    torch.load(evil, weights_only=False)  # the payload is live
    assert marker.exists()


def test_tool_reports_the_wrong_kind_of_file_in_one_line(tmp_path, capsys):
    torch.save(official_vqkd()[0], tmp_path / 'vqkd.pth')
    with pytest.raises(SystemExit) as err:
        load_tool('convert_checkpoint').main(
            [str(tmp_path / 'vqkd.pth'), str(tmp_path / 'out.pth'),
             '--from', 'unilm'])
    assert str(err.value) == (
        'convert_checkpoint: checkpoint looks like a VQ-KD tokenizer in the '
        'official / timm layout (quantize.embedding.weight), not like a BEiT '
        "model: convert it with model='vqkd'")


@pytest.mark.parametrize('name, content, expected', [
    ('empty.pth', b'', "Cannot load '{}': truncated checkpoint"),
    ('list.pth', None, '{} holds a list, not a checkpoint'),
    ('broken.safetensors', b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":',
     '{} is not a readable safetensors file'),
    ('notes.pth', b'epoch 1: loss 0.5\n', "'{}' is not a checkpoint"),
])
def test_tool_reports_a_broken_file_in_one_line(tmp_path, name, content,
                                                expected):
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(2)], path)  # a pickled list
    else:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as err:
        load_tool('convert_checkpoint').main(
            [str(path), str(tmp_path / 'out.pth'), '--from', 'unilm'])
    assert str(err.value).startswith(
        'convert_checkpoint: ' + expected.format(path))
    assert not (tmp_path / 'out.pth').exists()
