"""Tests of ``tools/visualize_masks.py``."""
import cv2
import numpy as np

from helpers import load_tool

GRAY = 128


def test_png_grid_shows_the_masks(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    for index in range(3):
        cv2.imwrite(str(images / f'{index}.png'),
                    np.full((40, 48, 3), GRAY, np.uint8))
    config = tmp_path / 'config.py'
    config.write_text(f"""
default_scope = 'beit_plugin'
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        type='CustomDataset',
        data_root={str(images)!r},
        with_label=False,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='RandomResizedCrop', scale=32),
            dict(type='BlockwiseMaskGenerator', input_size=4,
                 num_masking_patches=2, min_num_patches=2, fixed_count=True),
            dict(type='PackInputs'),
        ]))
""")
    out = tmp_path / 'masks.png'
    tool = load_tool('visualize_masks')
    tool.main([
        str(config), '--num', '5', '--out', str(out), '--cfg-options',
        'train_dataloader.dataset.pipeline.2.num_masking_patches=6'
    ])

    grid = cv2.imread(str(out))
    # 3 images of 32 px (only 3 exist), 2 per row, 2 px apart and around
    assert grid.shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    tiles = [grid[2:34, 2:34], grid[2:34, 36:68], grid[36:68, 2:34]]
    for tile in tiles:
        # each 8 px patch is either left gray or tinted as a whole
        patches = tile.reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4)
        changed = (patches != GRAY).any(-1)
        assert (changed.all((2, 3)) | ~changed.any((2, 3))).all()
        masked = changed.all((2, 3))
        assert masked.sum() == 6  # the --cfg-options count, exactly
        assert (patches[masked][..., 2] > GRAY).all()  # red tint (BGR)
    assert not np.array_equal(tiles[0], tiles[1])  # each sample its own mask
    assert (grid[36:68, 36:68] == tool.BACKGROUND).all()  # no 4th image
