"""tools/gpu_check.py: the parts that run without a GPU.

Its options and errors, the plan of steps that ``--dry-run`` lists (the
commands a GPU machine would run), and the reading of the pytest output and
of a training log into the report's figures.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tool_modules import load_tool

REPO_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(REPO_DIR, 'tools', 'gpu_check.py')
gpu_check = load_tool('tools/gpu_check.py', 'gpu_check')


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=120)


def test_help_names_the_steps_and_options():
    proc = run_script('--help')
    assert proc.returncode == 0, proc.stderr
    for word in ('--dry-run', '--steps', '--wheels', '--build-mmcv',
                 '--bench-dtypes', 'report file'):
        assert word in proc.stdout, word


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / 'report.md'
    proc = run_script(str(out), '--dry-run')
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    steps = [line.split(':')[0] for line in text.splitlines()
             if line[:1].isdigit()]
    assert steps == ['1. env', '2. tests', '3. train', '4. benchmark']
    assert 'tests/test_cuda.py' in text and 'tests/test_no_sync.py' in text
    assert 'make_shapes_coco' in text
    train = [line for line in text.splitlines() if 'tools/train.py' in line]
    assert len(train) == 1 and '--amp' in train[0]
    assert 'retinanet_transcnn_small_shapes.py' in train[0]
    bench = [line for line in text.splitlines() if 'benchmark.py' in line]
    assert len(bench) == 1
    for part in ('--device cuda', '--dtypes fp32 fp16 bf16',
                 '--models TransCNN-Base Swin-T PVT-Small ResNet-50',
                 '--cases backbone-224 backbone-det backbone-train'):
        assert part in bench[0], part
    assert not out.exists() and not (tmp_path / 'train').exists()


def test_dry_run_with_wheels_installs_keeping_torch(tmp_path):
    proc = run_script(str(tmp_path / 'r.md'), '--dry-run', '--wheels',
                      str(tmp_path / 'w'), '--build-mmcv',
                      str(tmp_path / 'mmcv-2.1.0.tar.gz'), '--steps', 'env')
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    steps = [line.split(':')[0] for line in text.splitlines()
             if line[:1].isdigit()]
    assert steps == ['1. build-mmcv', '2. install', '3. env']
    assert 'MMCV_WITH_OPS=1 FORCE_CUDA=1' in text
    assert '-std=c++20' in text
    install = [line for line in text.splitlines()
               if 'pip install --no-index' in line]
    assert len(install) == 1 and ' -c ' in install[0]
    assert 'mmcv==2.1.0' in install[0] and 'mmdet==3.3.0' in install[0]
    assert 'torch==' in text  # the constraint keeps the installed torch


@pytest.mark.parametrize('args,field', [
    (['--steps', 'env', 'gpu'], '--steps'),
    (['--bench-dtypes', 'fp8'], '--bench-dtypes'),
    (['--bench-cases', 'nope'], '--bench-cases'),
    (['--train-epochs', '0'], '--train-epochs'),
    (['--build-mmcv', 'x.tar.gz'], '--build-mmcv'),
])
def test_bad_options_name_the_field_and_the_allowed_values(args, field):
    proc = run_script('--dry-run', *args)
    assert proc.returncode == 2
    assert field in proc.stderr, proc.stderr
    if field in ('--steps', '--bench-dtypes'):
        assert 'allowed' in proc.stderr


PYTEST_OUT = """\
SKIPPED [2] tests/test_cuda.py:190: no CUDA device: torch.cuda.is_available() is False
FAILED tests/test_cuda.py::test_cuda_with_cp_same_gradients - AssertionError
1 failed, 40 passed, 2 skipped in 12.00s
"""


def test_test_summary_counts_and_flags_skipped_cuda_tests():
    ok, lines = gpu_check.summarise_tests(PYTEST_OUT, {})
    assert not ok  # one failed
    assert lines[0] == '- counts: 1 failed, 40 passed, 2 skipped'
    passing = PYTEST_OUT.replace('1 failed, ', '').replace(
        'FAILED tests/test_cuda.py::test_cuda_with_cp_same_gradients - '
        'AssertionError\n', '')
    assert gpu_check.summarise_tests(passing, {})[0]
    # On a GPU machine a CUDA test must not skip for want of a device.
    ok, lines = gpu_check.summarise_tests(passing, {'cuda_available': True})
    assert not ok and any('skipped although a GPU' in l for l in lines)


def test_training_summary_reads_loss_map_and_wrapper(tmp_path):
    run = tmp_path / '20260101_000000' / 'vis_data'
    os.makedirs(run)
    records = [dict(loss=2.0 - 0.1 * i, memory=900 + i, time=0.1, iter=i)
               for i in range(1, 11)]
    records.append({'coco/bbox_mAP': 0.41, 'coco/bbox_mAP_50': 0.62,
                    'coco/bbox_mAP_75': 0.44, 'step': 10})
    with open(run / 'scalars.json', 'w') as f:
        f.write('\n'.join(json.dumps(r) for r in records))
    (tmp_path / 'config.py').write_text(
        "optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')")
    ok, lines = gpu_check.summarise_training(str(tmp_path))
    text = '\n'.join(lines)
    assert ok, text
    assert 'mean of the first 2: 1.8500, of the last 2: 1.0500' in text
    assert 'bbox_mAP 0.410' in text and 'bbox_mAP_50 0.620' in text
    assert 'peak memory (logged, MB): 910' in text
    assert 'optimizer wrapper: AmpOptimWrapper' in text
    # A loss that did not fall fails the step.
    with open(run / 'scalars.json', 'w') as f:
        f.write('\n'.join(json.dumps(dict(r, loss=1.0)) for r in records[:-1]
                          ) + '\n' + json.dumps(records[-1]))
    assert not gpu_check.summarise_training(str(tmp_path))[0]


def test_env_step_runs_and_reports(tmp_path):
    """The one step that runs anywhere: without a GPU it fails, saying so,
    and the report holds the versions; --append keeps what was there."""
    import torch
    out = tmp_path / 'report.md'
    out.write_text('# an earlier report\n')
    proc = run_script(str(out), '--steps', 'env', '--append')
    text = out.read_text()
    assert text.startswith('# an earlier report\n\n## mmtranscnn GPU check')
    assert f'- torch: {torch.__version__}' in text
    assert '### env: torch, CUDA, GPU, mmcv CUDA ops' in text
    assert '- mmcv: 2.1.0' in text
    if torch.cuda.is_available():
        assert 'Result: all steps passed' in text, text
        assert proc.returncode == 0
    else:
        assert 'FAILED (no CUDA device)' in text
        assert 'Result: FAILED: env' in text
        assert proc.returncode == 1
