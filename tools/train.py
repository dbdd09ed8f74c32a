"""Train a model from a config (the OpenMMLab ``tools/train.py``).

Examples::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    bash tools/dist_train.sh CONFIG NUM_PROCESSES [ARGS]

``import beit_plugin`` comes before the runner is built, so that the fixes of
:mod:`beit_plugin.compat` this environment needs apply (the run's log says
which) and the plugin's components are registered. Without CUDA, ``--amp``
trains with bfloat16 autocast (``beit_plugin.BF16AmpOptimWrapper``) and
distributed launches use ``gloo`` with CPU DDP
(:mod:`beit_plugin.distributed`). A ``Pretrained`` checkpoint under
``work_dirs/<name>/`` that does not exist is reported with the command that
writes it, where ``configs/`` beside this tool has ``<name>.py``.
"""
import argparse
import logging
import os
import os.path as osp
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

# importing beit_plugin applies beit_plugin.compat and registers the plugin
from beit_plugin.distributed import build_runner, configure_cpu_distributed


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or, without a path, from the '
        'latest checkpoint in the work directory')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training (bfloat16 autocast '
        'when CUDA is unavailable)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual total batch size over '
        '`auto_scale_lr.base_batch_size` of the config')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'train_cfg.max_iters=10 or key="[a,b]"; no white space allowed')
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


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to mixed precision.

    With CUDA: MMEngine's ``AmpOptimWrapper`` (float16, dynamic loss scale).
    Without: ``beit_plugin.BF16AmpOptimWrapper`` (bfloat16 autocast), since
    ``AmpOptimWrapper`` refuses to be built without a GPU.
    """
    optim_wrapper = cfg.optim_wrapper
    if torch.cuda.is_available():
        if optim_wrapper.get('type') == 'AmpOptimWrapper':
            print_log(
                'AMP training is already enabled in your config.',
                logger='current',
                level=logging.WARNING)
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
        return
    print_log(
        'CUDA is not available: --amp trains with bfloat16 autocast on the '
        'CPU (beit_plugin.BF16AmpOptimWrapper), as MMEngine\'s '
        'AmpOptimWrapper needs a GPU.',
        logger='current',
        level=logging.WARNING)
    optim_wrapper.type = 'beit_plugin.BF16AmpOptimWrapper'
    optim_wrapper.pop('loss_scale', None)
    optim_wrapper.pop('dtype', None)


def enable_auto_scale_lr(cfg: Config) -> None:
    """Turn on ``auto_scale_lr``, which the config must describe."""
    if cfg.get('auto_scale_lr', {}).get('base_batch_size') is None:
        raise RuntimeError(
            '--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` '
            'in the config')
    cfg.auto_scale_lr.enable = True


def build_config(args: argparse.Namespace) -> Config:
    """Load ``args.config`` and apply the command-line options to it.

    The work dir is, by priority, ``--work-dir``, the config's ``work_dir``,
    then ``./work_dirs/<config file stem>``; ``--cfg-options`` come last and
    override everything.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if (not torch.cuda.is_available()
            and cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper'):
        enable_amp(cfg)  # a GPU recipe on a CPU: bfloat16 instead of float16
    configure_cpu_distributed(cfg)
    return cfg


def command_that_writes(path: str) -> Optional[str]:
    """``python tools/train.py configs/.../<name>.py`` for a checkpoint
    ``.../work_dirs/<name>/...``, when ``configs/`` beside this tool (a
    checkout's, or the installed package's ``.mim``) has ``<name>.py``;
    paths relative to the working directory when they are below it."""
    parts = Path(path).parts
    if 'work_dirs' not in parts[:-1]:
        return None
    name = parts[parts.index('work_dirs') + 1]
    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / 'configs').rglob(f'{name}.py'))
    if not configs:
        return None

    def shown(file: Path) -> str:
        try:
            return file.relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            return file.as_posix()

    return (f'python {shown(root / "tools" / "train.py")} '
            f'{shown(configs[0])}')


def with_checkpoint_hint(error: FileNotFoundError) -> FileNotFoundError:
    """``error`` (a missing checkpoint, its path as ``checkpoint``, as the
    BEiT backbone raises it) with the command that writes the checkpoint
    added, where there is one."""
    path = getattr(error, 'checkpoint', None)
    command = command_that_writes(path) if isinstance(path, str) else None
    if command is None:
        return error
    hinted = FileNotFoundError(f'{error}: it is written by `{command}`')
    hinted.checkpoint = path
    return hinted


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Train as the command line ``argv`` says."""
    cfg = build_config(parse_args(argv))
    try:
        build_runner(cfg).train()
    except FileNotFoundError as error:
        hinted = with_checkpoint_hint(error)
        if hinted is error:
            raise
        raise hinted from error
    finally:
        # each rank leaves the process group before its interpreter exits,
        # rather than with gloo's threads still running at shutdown
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        # A rank whose run finished can still die at interpreter teardown,
        # in C++ thread destructors of torch.distributed ("terminate called
        # without an active exception", SIGABRT; seen about once in ten
        # two-rank CPU runs). Everything is written: flush and leave
        # without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
