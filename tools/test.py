"""Test (and evaluate) a checkpoint (the OpenMMLab ``tools/test.py``).

Examples::

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [ARGS]

``import beit_plugin`` comes before the runner is built, so that the fixes of
:mod:`beit_plugin.compat` this environment needs apply (the checkpoint is
loaded with ``weights_only=True``; the run's log says which fixes are active)
and the plugin's components are registered.
"""
import argparse
import os
import os.path as osp
from typing import Dict, Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.evaluator import DumpResults

# importing beit_plugin applies beit_plugin.compat and registers the plugin
from beit_plugin.distributed import build_runner, configure_cpu_distributed


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the evaluation metrics and logs')
    parser.add_argument(
        '--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument(
        '--show-dir', help='save the visualised predictions in this dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'test_dataloader.batch_size=4 or key="[a,b]"; no white space allowed')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Make the config's visualization hook save its drawings to ``show_dir``.

    Handles MMSegmentation's ``SegVisualizationHook`` (``draw``, images saved
    under the visualizer's ``save_dir``, as ``<show_dir>/vis_data/vis_image/
    test_<image>_0.png``) and MMPretrain's ``VisualizationHook`` (``enable``,
    ``out_dir``, as ``<show_dir>/<image>_0.png``). Both draw only every
    ``interval``-th batch (``SegVisualizationHook``: 50 in MMSegmentation's
    runtime base) or image (``VisualizationHook``: 5000 by default); it is
    set to 1 so that every prediction is saved (``--cfg-options
    default_hooks.visualization.interval=N`` after it still wins).
    """
    hook: Optional[Dict] = cfg.default_hooks.get('visualization')
    if hook is None:
        raise RuntimeError(
            '--show-dir needs a `visualization` hook in `default_hooks`')
    if hook['type'].endswith('SegVisualizationHook'):
        hook['draw'] = True
        hook['interval'] = 1
        cfg.visualizer['save_dir'] = show_dir
        # MMSegmentation's base names it 'visualizer', and an instance of that
        # name made earlier in this process (e.g. by a training run) would be
        # reused with its own save_dir; unnamed, the Runner names it after
        # its experiment.
        cfg.visualizer.pop('name', None)
    else:
        hook['enable'] = True
        hook['interval'] = 1
        hook['out_dir'] = show_dir


def build_config(args: argparse.Namespace) -> Config:
    """Load ``args.config`` and apply the command-line options to it.

    The work dir is, by priority, ``--work-dir``, the config's ``work_dir``,
    then ``./work_dirs/<config file stem>``; ``--cfg-options`` come last.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show_dir is not None:
        enable_visualization(cfg, args.show_dir)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    configure_cpu_distributed(cfg)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Test as the command line ``argv`` says; return the metrics."""
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    main()
