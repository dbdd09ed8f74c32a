"""beit-plugin: BEiT v1 / v2 for MMEngine, MMPretrain and MMSegmentation.

mmcv is not a hard requirement, so that an existing full (compiled) mmcv is
never replaced: pick ``.[lite]`` (pure-Python mmcv-lite, enough for BEiT) or
``.[full]`` (compiled mmcv, built from source unless a wheel matches your
torch), or install mmcv yourself first.

The package carries the repository's configs, tools and demo tokenizer in
``beit_plugin/.mim`` (see :mod:`beit_plugin.package_files`): relative symlinks
in the checkout, which an editable install uses as they are; building a wheel
copies the files they point to (``package_data`` follows the links).
"""
from setuptools import find_packages, setup

setup(
    name='beit-plugin',
    version='0.1.0',
    description='BEiT v1 / v2 pretraining, fine-tuning and segmentation '
    'as an OpenMMLab plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',  # int.bit_count (masking.py)
    packages=find_packages(include=['beit_plugin', 'beit_plugin.*']),
    # `**` needs setuptools >= 62.3 to build (pip's isolated build has it)
    package_data={'beit_plugin': [
        '.mim/configs/**/*.py',
        '.mim/configs/**/*.yml',  # metafiles, when present
        '.mim/tools/*.py',
        '.mim/tools/*.sh',
        '.mim/model-index.yml',
        '.mim/checkpoints/vqkd_demo_hog.pth',  # the embedded default's targets
    ]},
    install_requires=[
        'torch>=2.6',  # torch.serialization.safe_globals
        'torchvision',  # mmpretrain imports it without declaring it
        'mmengine>=0.10.0,<0.11',
        'mmpretrain>=1.2.0,<1.3',
        'mmsegmentation>=1.2.2,<1.3',
        'ftfy',  # mmsegmentation imports these without declaring them
        'regex',
        'einops',
        'numpy',
        'safetensors',
        # mmengine 0.10.7 resolves `mmpretrain::`/`mmseg::` config bases with
        # pkg_resources (gone in setuptools 81) before any plugin code runs;
        # torch 2.14 needs >= 77.0.3
        'setuptools>=77.0.3,<81',
    ],
    extras_require={
        # mmsegmentation 1.2.2 refuses mmcv >= 2.2
        'lite': ['mmcv-lite>=2.0.0,<2.2.0'],
        'full': ['mmcv>=2.0.0,<2.2.0'],
        # TensorboardVisBackend (vis_backends in a config): MMEngine writes
        # through torch.utils.tensorboard, which needs this package
        'tensorboard': ['tensorboard'],
        # independent implementations our parity tests compare against
        # plus the linter `make lint` and CI run (rules in ruff.toml), and
        # tensorboard, so that CI checks the TensorBoard pictures too
        'tests': ['pytest', 'timm>=1.0', 'transformers>=4.40', 'scipy',
                  'ruff', 'tensorboard'],
    },
)
