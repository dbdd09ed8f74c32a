"""Demo datasets make their data on first use and read it with mmpretrain."""
from beit_plugin.datasets import DemoImageNet
from beit_plugin.datasets.demo_data import SHAPE_CLASSES
from conftest import mmengine_log


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
