"""Our components build from our scope, from mmpretrain's and from mmseg's."""
import textwrap

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

from beit_plugin.models.backbones import BEiT

TINY = dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                      feedforward_channels=64), img_size=32, patch_size=8)


def build_from_config(tmp_path, scope: str, type_name: str):
    """Write a config as a user would, load it, build as the Runner does."""
    path = tmp_path / f'{scope}_cfg.py'
    path.write_text(textwrap.dedent(f"""
        custom_imports = dict(imports=['beit_plugin'],
                              allow_failed_imports=False)
        default_scope = '{scope}'
        model = dict(type='{type_name}', **{TINY!r})
    """))
    cfg = Config.fromfile(str(path))
    name = f'test-{scope}-{type_name}'
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        DefaultScope.get_instance(name, scope_name=cfg.default_scope)
        return ROOT_MODELS.build(cfg.model)


@pytest.mark.parametrize('scope,type_name', [
    ('beit_plugin', 'BEiT'),
    ('beit_plugin', 'beit_plugin.BEiT'),
    ('mmpretrain', 'beit_plugin.BEiT'),
    ('mmseg', 'beit_plugin.BEiT'),
])
def test_backbone_builds_from_each_scope(tmp_path, scope, type_name):
    assert isinstance(build_from_config(tmp_path, scope, type_name), BEiT)


def test_mmpretrain_names_are_not_shadowed(tmp_path):
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    assert MMPRETRAIN_MODELS.get('BEiT') is not BEiT  # their MIM algorithm
    assert MMPRETRAIN_MODELS.get('BEiT').__module__.startswith('mmpretrain')
    model = build_from_config(tmp_path, 'mmpretrain', 'BEiTViT')
    assert type(model).__module__.startswith('mmpretrain')


def test_mmpretrain_components_resolve_from_our_scope(tmp_path):
    path = tmp_path / 'cls.py'
    path.write_text(textwrap.dedent(f"""
        custom_imports = dict(imports=['beit_plugin'],
                              allow_failed_imports=False)
        default_scope = 'beit_plugin'
        model = dict(type='ImageClassifier',
                     backbone=dict(type='BEiT', out_type='avg_featmap',
                                   **{TINY!r}),
                     head=dict(type='LinearClsHead', num_classes=3,
                               in_channels=32))
    """))
    cfg = Config.fromfile(str(path))
    with DefaultScope.overwrite_default_scope('beit_plugin'):
        model = ROOT_MODELS.build(cfg.model)
    assert type(model).__name__ == 'ImageClassifier'
    assert isinstance(model.backbone, BEiT)
