"""Demo datasets make their data on first use and read it with mmpretrain."""
import pytest

from beit_plugin.datasets import DemoADE20K, DemoImageNet
from beit_plugin.datasets.demo_data import ForeignDataError, SHAPE_CLASSES
from helpers import mmengine_log


def test_demo_imagenet_generates_missing_data_and_loads_it(tmp_path):
    root = tmp_path / 'demo' / 'imagenet'
    assert not root.exists()
    with mmengine_log() as logged:
        dataset = DemoImageNet(data_root=str(root), split='val')
        DemoImageNet(data_root=str(root), split='train')  # made: no message
    assert [m for m in logged if 'demo set' in m] == [
        f'{root.parent} holds no complete demo set: generating the default '
        'one (seed 0) there']
    assert (root / 'meta' / 'val.txt').is_file()
    assert tuple(dataset.metainfo['classes']) == SHAPE_CLASSES
    assert len(dataset) == 320
    first = dataset.get_data_info(0)
    name = first['img_path'].split('/')[-2]
    assert SHAPE_CLASSES[first['gt_label']] == name


def _users_data(root):
    """A user's own ImageNet and ADE folders under ``root``; their bytes."""
    files = {
        root / 'imagenet' / 'train' / 'cat' / 'cat_1.jpg': b'\xff\xd8cat',
        root / 'ade' / 'images' / 'training' / 'a.jpg': b'\xff\xd8ade',
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    return files


def test_demo_datasets_never_touch_a_users_data(tmp_path):
    files = _users_data(tmp_path / 'data')
    for dataset, sub, kwargs in (
            (DemoImageNet, 'imagenet', dict(split='train')),
            (DemoADE20K, 'ade', {})):
        with pytest.raises(ForeignDataError,
                           match=f"{tmp_path / 'data'} is not a demo data "
                           'folder'):
            dataset(data_root=str(tmp_path / 'data' / sub), **kwargs)
    assert all(path.read_bytes() == data for path, data in files.items())
    assert sorted(p.name for p in (tmp_path / 'data').iterdir()) == [
        'ade', 'imagenet']
