"""tools/benchmark.py: every job, ours vs the upstream peer, at a tiny size.

The figures themselves depend on the machine; these tests hold the tool to
what its tables claim: both sides measured, positive times, images/s and
ratios computed from them, the sweep over sizes and batches, the profile,
and the JSON equal to what ``main`` returns. ``cuda``-marked tests run the
CUDA paths (AMP float16 / bfloat16, peak allocated memory) on a GPU.
"""
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'benchmark.py'
GPU_CHECK = ROOT / 'tools' / 'gpu_check.sh'
#: mini arch (64 wide, 6 blocks), 32 px (a 2 x 2 patch grid), 2 images
TINY = ['--arch', 'mini', '--img-size', '32', '--batch', '2', '--steps', '2',
        '--warmup', '0', '--pipeline-images', '3']
CUDA = torch.cuda.is_available()


def load_benchmark():
    spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def bench():
    return load_benchmark()


def check_step_row(row, job, img_size, batch):
    assert (row['job'], row['img_size'], row['batch']) == \
        (job, img_size, batch)
    for side in ('ours', 'peer'):
        figures = row[side]
        assert figures['ms_per_step'] > 0
        # the median of the timed steps (kept to the microsecond)
        assert figures['ms_per_step'] == pytest.approx(
            statistics.median(figures['ms_all']), abs=1e-3)
        assert figures['images_per_s'] == pytest.approx(
            batch / figures['ms_per_step'] * 1e3)
        assert figures['peak_mib'] is None or figures['peak_mib'] > 0
    assert row['ratio_ms'] == pytest.approx(
        row['ours']['ms_per_step'] / row['peer']['ms_per_step'])
    if row['ours']['peak_mib'] is not None:
        assert row['ratio_mem'] == pytest.approx(
            row['ours']['peak_mib'] / row['peer']['peak_mib'])
    for side in ('ours', 'peer'):
        figures = row[side]
        assert figures['gflop_per_step'] > 0
        assert figures['tflops'] == pytest.approx(
            figures['gflop_per_step'] / figures['ms_per_step'])
    assert row['ratio_flops'] == pytest.approx(
        row['ours']['gflop_per_step'] / row['peer']['gflop_per_step'])


@pytest.mark.parametrize('job', ['pretrain-v1', 'pretrain-v2', 'finetune',
                                 'upernet-512', 'backbone'])
def test_job_measures_both_sides(bench, job, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    report = bench.main([*TINY, '--jobs', job, '--json', str(out)])
    assert len(report['steps']) == 1
    row = report['steps'][0]
    check_step_row(row, job, 32, 2)
    if sys.platform.startswith('linux'):
        assert row['ours']['peak_mib'] is not None
    # the models the job compares: ours from our package, the peer from
    # upstream's
    assert row['ours']['model'].endswith('/beit_plugin')
    assert row['peer']['model'].split('/')[1] in ('mmpretrain', 'mmseg')
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    table = capsys.readouterr().out
    assert f'| {job} | 32 | 2 | ' in table
    assert 'random weights' in table  # says the tokenizers are random
    # the steps' rate against one large product's on this device
    rate = report['meta']['matmul']['tflops']
    assert rate > 0 and report['meta']['matmul']['dtype'] == 'float32'
    share = row['ours']['tflops'] / rate * 100
    assert f"| {row['ratio_flops']:.2f} | " in table
    assert f' | {share:.1f} | ' in table


def test_step_flops_by_hand(bench):
    """2 FLOPs per multiply-add executed, forward and backward; the CPU's
    fused attention kernel counts as torch counts the CUDA ones."""
    x = torch.randn(4, 8, requires_grad=True)
    linear = torch.nn.Linear(8, 16)
    b, h, n, e = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, n, e, requires_grad=True) for _ in range(3))

    def side(step):
        return bench.Side('toy', linear, step, lambda: 0)

    def fused():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum() \
            .backward()

    def explicit():
        attn = (q @ k.transpose(-2, -1) * e**-0.5).softmax(-1)
        (attn @ v).sum().backward()

    # forward x @ W^T, backward the gradients of x and of W: 3 products
    assert bench.step_flops(side(lambda: linear(x).sum().backward())) == \
        3 * 2 * 4 * 8 * 16
    # forward q k^T and attn v, backward 2 products for each of them
    product = 2 * b * h * n * n * e
    assert bench.step_flops(side(explicit)) == 6 * product
    # the fused backward recomputes q k^T first
    assert bench.step_flops(side(fused)) == 7 * product


def test_a_failing_flop_count_keeps_the_measurements(bench, monkeypatch,
                                                     capsys):
    class Broken:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError('counter broke')

        def __exit__(self, *args):
            return False

    monkeypatch.setattr(bench, 'FlopCounterMode', Broken)
    report = bench.main([*TINY, '--jobs', 'finetune'])
    row = report['steps'][0]
    for side in ('ours', 'peer'):
        assert row[side]['ms_per_step'] > 0
        assert row[side]['gflop_per_step'] is None
        assert row[side]['tflops'] is None
    assert row['ratio_flops'] is None
    captured = capsys.readouterr()
    assert 'FLOPs not counted: RuntimeError: counter broke' in captured.err
    assert '| finetune | 32 | 2 | - | - | - |' in captured.out


def test_sweep_over_sizes_and_batches(bench):
    report = bench.main([*TINY, '--jobs', 'backbone', '--img-size', '32,48',
                         '--batch', '1,2'])
    rows = report['steps']
    assert [(r['img_size'], r['batch']) for r in rows] == \
        [(32, 1), (32, 2), (48, 1), (48, 2)]
    for r in rows:
        check_step_row(r, 'backbone', r['img_size'], r['batch'])


def test_profile_lists_top_operators(bench, capsys):
    report = bench.main([*TINY, '--jobs', 'finetune', '--profile', '3'])
    row = report['steps'][0]
    for side in ('ours', 'peer'):
        ops = row[side]['profile']
        assert 0 < len(ops) <= 3
        assert all(op['self_ms'] > 0 and op['calls'] > 0 for op in ops)
        assert [op['self_ms'] for op in ops] == \
            sorted((op['self_ms'] for op in ops), reverse=True)
    assert 'Top operators, finetune' in capsys.readouterr().out


def test_pipeline_and_workers_to_keep_up(bench, capsys):
    report = bench.main([*TINY, '--jobs', 'pretrain-v2,pipeline-v2'])
    pipe = report['pipelines'][0]
    assert (pipe['job'], pipe['img_size'], pipe['images']) == \
        ('pipeline-v2', 32, 3)
    for side in ('ours', 'peer'):
        assert pipe[side]['images_per_s'] > 0
        assert pipe[side]['ms_per_image'] == pytest.approx(
            1e3 / pipe[side]['images_per_s'])
    assert pipe['ratio_ms'] == pytest.approx(
        pipe['ours']['ms_per_image'] / pipe['peer']['ms_per_image'])
    [feed] = report['feeding']
    step = report['steps'][0]
    assert feed['workers_needed'] == math.ceil(
        step['ours']['images_per_s'] / pipe['ours']['images_per_s'])
    assert '| pipeline-v2 | 32 | ' in capsys.readouterr().out


def test_configs_are_shaped_alike_and_keep_their_models(bench):
    args = bench.parse_args(['--arch', 'mini'])
    job = bench.JOBS['pretrain-v2']
    cfgs = bench.job_configs(job, args, 48)
    ours, peer = cfgs['ours'].model, cfgs['peer'].model
    assert ours.type == 'beit_plugin.BEiTPretrainer'
    assert (peer.type, peer.backbone.type) == ('BEiT', 'BEiTPretrainViT')
    assert ours.backbone.arch == peer.backbone.arch == bench.ARCHS['mini']
    assert ours.backbone.img_size == peer.backbone.img_size == 48
    # nothing to download: no checkpoint for either tokenizer
    assert 'init_cfg' not in ours.target_generator
    assert 'init_cfg' not in peer.target_generator
    # the mask grid and count follow the size: 3 x 3 patches
    for cfg in cfgs.values():
        [mask] = [s for s in cfg.train_dataloader.dataset.pipeline
                  if 'Mask' in s['type']]
        assert mask['num_masking_patches'] == 3


def test_paper_settings_at_the_paper_sizes(bench):
    assert bench.mask_settings(14) == dict(num_masking_patches=75,
                                           min_num_patches=16)
    assert bench.seg_out_indices(12) == (3, 5, 7, 11)
    assert bench.seg_out_indices(24) == (7, 11, 15, 23)


def test_fp16_refused_on_cpu(bench):
    if CUDA:
        pytest.skip('tests the CPU-only refusal')
    with pytest.raises(SystemExit):
        bench.parse_args(['--device', 'cpu', '--amp', 'fp16'])


@pytest.mark.slow
def test_command_line_demo(tmp_path):
    out = tmp_path / 'bench.json'
    result = subprocess.run(
        [sys.executable, str(TOOL), '--demo', '--jobs', 'backbone',
         '--steps', '2', '--device', 'cpu', '--json', str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads(out.read_text())['steps']
    assert (row['img_size'], row['batch']) == (64, 4)
    assert '| backbone | 64 | 4 | ' in result.stdout


def test_gpu_check_script_parses():
    result = subprocess.run(['bash', '-n', str(GPU_CHECK)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """Every step of the prepared GPU run, tiny, on a CPU: a device session
    is short and rare, and must not find the script broken."""
    out, work = tmp_path / 'out', tmp_path / 'work'
    result = subprocess.run(
        ['bash', str(GPU_CHECK), '--dry-run'], cwd=ROOT, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, 'OUT': str(out), 'WORK': str(work),
             'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert [(s['name'], s['status']) for s in summary['steps']] == [
        (name, '0') for name in ('environment', 'matmul', 'attention', 'tests',
                                 'train-config', 'train-fp16', 'train-bf16',
                                 'benchmark', 'sweep')]
    for run in summary['train'].values():
        assert run['finite'] and run['last_iter'] == 2
    rate = summary['matmul']['tflops']
    rows = summary['benchmark']
    assert {r['job'] for r in rows} == {'pretrain-v1', 'pretrain-v2',
                                        'finetune', 'upernet-512',
                                        'upernet-640'}
    for r in rows:
        assert r['ours_share_of_matmul'] == pytest.approx(
            r['ours_tflops'] / rate)
    assert {'benchmark.md', 'attention.json', 'sweep.json', 'tests.xml',
            'gpu_check.log'} <= {f.name for f in out.iterdir()}


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU')
@pytest.mark.parametrize('amp', ['fp16', 'bf16'])
def test_cuda_amp_steps(bench, amp):
    report = bench.main([*TINY, '--device', 'cuda', '--amp', amp, '--jobs',
                         'pretrain-v1,pretrain-v2,finetune,upernet-512,'
                         'backbone', '--profile', '3'])
    assert [r['job'] for r in report['steps']] == [
        'pretrain-v1', 'pretrain-v2', 'finetune', 'upernet-512', 'backbone']
    for row in report['steps']:
        check_step_row(row, row['job'], 32, 2)
        # CUDA peak memory: max allocated, always measured
        assert row['ours']['peak_mib'] > 0 and row['peer']['peak_mib'] > 0
        assert row['ours']['profile'] and row['peer']['profile']
    assert report['meta']['device_name'] == torch.cuda.get_device_name()


def load_attention_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_attention', ROOT / 'tools' / 'benchmark_attention.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_kernels_timed_and_checked_against_float64(tmp_path):
    out = tmp_path / 'attention.json'
    report = load_attention_tool().main(
        ['--batch', '2', '--heads', '2', '--tokens', '5', '--head-dims', '4',
         '--steps', '2', '--warmup', '0', '--no-flex', '--json', str(out)])
    assert json.loads(out.read_text()) == report
    results = report['results']
    assert {'explicit', 'sdpa', 'sdpa-math'} <= set(results)
    for name in ('explicit', 'sdpa', 'sdpa-math'):
        assert results[name]['ms'] > 0
        for key in ('out', 'dq', 'dk', 'dv', 'dbias'):
            assert results[name][key] < 1e-4, (name, key)


def test_attention_tool_reports_a_wrong_kernel():
    """The error columns are real: a kernel without the bias is off."""
    tool = load_attention_tool()
    tool.sdpa = lambda q, k, v, bias: torch.nn.functional.\
        scaled_dot_product_attention(q, k, v)
    report = tool.main(['--batch', '2', '--heads', '2', '--tokens', '5',
                        '--head-dims', '4', '--steps', '1', '--warmup', '0',
                        '--no-flex'])
    assert report['results']['sdpa']['out'] > 1e-2
    assert report['results']['sdpa']['dbias'] > 1e-2
    assert report['results']['explicit']['out'] < 1e-4
