"""Tests of tools/train.py, tools/test.py and tools/dist_train.sh.

The end-to-end tests run the tools in subprocesses on a toy regression task
(tests/toy_tools_modules.py) on the CPU: a few iterations each. The others
check the option handling and the CPU distributed pieces in-process.
"""
import argparse
import functools
import json
import math
import os
import os.path as osp
import pickle
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from mmtranscnn.engine import (CPUDistributedDataParallel,
                               cpu_model_wrapper_cfg,
                               enable_test_visualization, merge_test_args,
                               merge_train_args, prepare_prediction_dump,
                               setup_codebase, setup_cpu_distributed)
from malicious import CodeOnLoad
from side_by_side import side_by_side
from tool_modules import load_tool

TESTS_DIR = osp.dirname(osp.abspath(__file__))
REPO_DIR = osp.dirname(TESTS_DIR)
TRAIN = osp.join(REPO_DIR, 'tools', 'train.py')
TEST = osp.join(REPO_DIR, 'tools', 'test.py')
DIST_TRAIN = osp.join(REPO_DIR, 'tools', 'dist_train.sh')
RUN_TIMEOUT = 60  # seconds, per subprocess

# The dist_cfg backend is deliberately the GPU default: the tools must pick
# gloo themselves on a machine without a GPU.
TOY_CONFIG = """
custom_imports = dict(imports=['toy_tools_modules'],
                      allow_failed_imports=False)
default_scope = 'mmengine'
model = dict(type='ToyRegressor', in_dim=8, hidden=16)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ToyRegressionDataset', size=64, seed=0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters})
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
test_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ToyRegressionDataset', size=16, seed=1))
test_cfg = dict(type='TestLoop')
test_evaluator = dict(type='ToyMSE')
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval={interval},
                    by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='ToyRecordHook', sleep={sleep}, kill_at={kill_at})]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='nccl'))
"""


def write_config(directory, max_iters=8, interval=4, sleep=0.0,
                 kill_at=None):
    """Write the toy config into ``directory`` and return its path."""
    path = osp.join(str(directory), 'toy_config.py')
    with open(path, 'w') as f:
        f.write(
            TOY_CONFIG.format(
                max_iters=max_iters, interval=interval, sleep=sleep,
                kill_at=kill_at))
    return path


def tool_env(**extra):
    """Environment for the tools: repo and toy modules importable."""
    env = dict(os.environ)
    # Do not inherit a distributed context from whatever runs the tests.
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                'MASTER_PORT'):
        env.pop(key, None)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO_DIR, TESTS_DIR] + ([env['PYTHONPATH']]
                                 if env.get('PYTHONPATH') else []))
    # dist_train.sh calls `python`: make it this interpreter.
    env['PATH'] = osp.dirname(sys.executable) + os.pathsep + env['PATH']
    env['PYTHON'] = sys.executable
    env['OMP_NUM_THREADS'] = '1'
    env.update(extra)
    return env


def run(cmd, **env):
    """Run a command, return the CompletedProcess (output captured)."""
    return subprocess.run(
        cmd,
        cwd=REPO_DIR,
        env=tool_env(**env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT)


def check_ok(proc):
    assert proc.returncode == 0, (
        f'exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n'
        f'STDERR:\n{proc.stderr[-4000:]}')


def train(config, work_dir, *options):
    proc = run([sys.executable, TRAIN, config, '--work-dir',
                str(work_dir), *options])
    check_ok(proc)
    return proc


def read_record(work_dir, rank=0):
    with open(osp.join(str(work_dir), f'record_rank{rank}.json')) as f:
        return json.load(f)


def assert_same_weights(weights_a, weights_b, atol=0.0):
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        a, b = torch.tensor(weights_a[key]), torch.tensor(weights_b[key])
        assert torch.allclose(a, b, rtol=0, atol=atol), key


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------ end to end


@pytest.fixture(scope='module')
def toy_runs(module_tmp):
    """Independent toy runs, side by side (one process each): name ->
    (config, work_dir, future of the CompletedProcess).

    - 'trained': 6 iterations, checkpoints every 3, set by --cfg-options;
    - 'uninterrupted': the 12 iterations the killed run of
      test_kill_and_auto_resume makes, in one go;
    - 'single': the 2-process run of test_dist_train_two_cpu_processes in
      one process with the batch of both.
    """
    runs = {
        'trained': (dict(max_iters=100, interval=50),
                    ('--cfg-options', 'train_cfg.max_iters=6',
                     'default_hooks.checkpoint.interval=3')),
        'uninterrupted': (dict(max_iters=12, interval=3), ()),
        'single': (dict(max_iters=5, interval=5),
                   ('--cfg-options', 'train_dataloader.batch_size=8')),
    }
    out, calls = {}, {}
    for name, (settings, options) in runs.items():
        root = module_tmp(name)
        config = write_config(root, **settings)
        out[name] = [config, root / 'work']
        calls[name] = functools.partial(train, config, root / 'work',
                                        *options)
    for name, result in side_by_side(calls).items():
        out[name].append(result)
    return out


@pytest.fixture(scope='module')
def trained(toy_runs):
    config, work_dir, result = toy_runs['trained']
    return config, work_dir, result.result()


@pytest.fixture(scope='module')
def after_trained(trained, module_tmp):
    """tools/test.py on iter_6 and a run resumed from iter_3 of the trained
    run, side by side. Name -> (directory, future of the CompletedProcess).
    """
    config, work_dir, _ = trained
    dirs = {name: module_tmp(name) for name in ('test', 'resumed')}
    calls = {
        'test': functools.partial(run, [
            sys.executable, TEST, config, str(work_dir / 'iter_6.pth'),
            '--work-dir', str(dirs['test'] / 'test'), '--out',
            str(dirs['test'] / 'preds.pkl'), '--cfg-options',
            'test_dataloader.batch_size=8']),
        'resumed': functools.partial(
            train, config, dirs['resumed'], '--resume',
            str(work_dir / 'iter_3.pth'), '--cfg-options',
            'train_cfg.max_iters=6', 'default_hooks.checkpoint.interval=3'),
    }
    results = side_by_side(calls)
    return {name: (dirs[name], results[name]) for name in calls}


@pytest.mark.slow
def test_train_writes_checkpoints_with_cfg_options(trained):
    config, work_dir, proc = trained
    # --cfg-options replaced max_iters=100 / interval=50 of the file.
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == [
        'iter_3.pth', 'iter_6.pth'
    ]
    with open(work_dir / 'last_checkpoint') as f:
        assert f.read().strip().endswith('iter_6.pth')
    record = read_record(work_dir)
    assert (record['start_iter'], record['end_iter']) == (0, 6)
    assert record['world_size'] == 1
    assert all(loss == loss for loss in record['losses'])  # no NaN
    assert record['losses'][-1] < record['losses'][0]


@pytest.mark.slow
def test_test_tool_evaluates_the_checkpoint(trained, after_trained):
    config, work_dir, _ = trained
    test_dir, result = after_trained['test']
    out = test_dir / 'preds.pkl'
    proc = result.result()
    check_ok(proc)
    found = re.search(r'toy/mse: ([0-9.]+)', proc.stdout + proc.stderr)
    assert found, proc.stdout[-2000:]

    # The metric must be that of the trained weights, not of a fresh model.
    from toy_tools_modules import ToyRegressor, toy_data
    model = ToyRegressor()
    model.load_state_dict({
        k: torch.tensor(v)
        for k, v in read_record(work_dir)['weights'].items()
    })
    inputs, target = toy_data(16, 8, seed=1)
    with torch.no_grad():
        expected = float(((model.net(inputs) - target)**2).mean())
    assert float(found.group(1)) == pytest.approx(expected, rel=1e-3)

    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 16


@pytest.mark.slow
def test_resume_from_given_checkpoint(trained, after_trained):
    """--resume PATH continues iter_3 of another run to the same result."""
    config, work_dir, _ = trained
    resumed_dir, result = after_trained['resumed']
    result.result()
    record = read_record(resumed_dir)
    assert (record['start_iter'], record['end_iter']) == (3, 6)
    assert_same_weights(record['weights'],
                        read_record(work_dir)['weights'], atol=1e-6)


@pytest.mark.slow
def test_kill_and_auto_resume(toy_runs, tmp_path):
    """A run SIGKILLed right after its checkpoint at iteration 6 (by its own
    hook, so the point is known, not raced); --resume finishes it."""
    max_iters = 12
    config = write_config(tmp_path, max_iters=max_iters, interval=3,
                          kill_at=6)
    work_dir = tmp_path / 'work'
    killed = run([sys.executable, TRAIN, config, '--work-dir', str(work_dir)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (work_dir / 'record_rank0.json').exists()  # never finished
    last = work_dir / 'last_checkpoint'
    saved_iter = int(
        re.search(r'iter_(\d+)\.pth', last.read_text()).group(1))
    assert saved_iter == 6

    # --resume without a path: the work_dir's latest checkpoint.
    resumed = train(config, work_dir, '--resume')
    record = read_record(work_dir)
    assert record['start_iter'] == saved_iter
    assert record['end_iter'] == max_iters
    assert len(record['losses']) == max_iters - saved_iter
    assert f'iter_{saved_iter}.pth' in resumed.stdout + resumed.stderr

    # The same schedule without interruption ends with the same weights.
    _, other, result = toy_runs['uninterrupted']
    result.result()
    assert_same_weights(record['weights'], read_record(other)['weights'],
                        atol=1e-6)


@pytest.mark.slow
def test_dist_train_two_cpu_processes(toy_runs, tmp_path):
    """2 gloo processes x batch 4 == 1 process x batch 8 (averaged grads)."""
    config = write_config(tmp_path, max_iters=5, interval=5)
    dist_dir = tmp_path / 'dist'
    proc = run(['bash', DIST_TRAIN, config, '2', '--work-dir',
                str(dist_dir)],
               PORT=str(free_port()))
    check_ok(proc)
    ranks = [read_record(dist_dir, rank) for rank in (0, 1)]
    assert [r['world_size'] for r in ranks] == [2, 2]
    assert [r['end_iter'] for r in ranks] == [5, 5]
    # DDP keeps the replicas identical although each saw other samples.
    assert ranks[0]['losses'] != ranks[1]['losses']
    assert_same_weights(ranks[0]['weights'], ranks[1]['weights'])
    assert (dist_dir / 'iter_5.pth').exists()

    _, single_dir, result = toy_runs['single']
    result.result()
    single = read_record(single_dir)
    assert_same_weights(ranks[0]['weights'], single['weights'], atol=1e-5)
    # Rank r gets samples r, r+2, ...: the mean of the two ranks' losses is
    # the loss of the whole batch of 8.
    mean_losses = [(a + b) / 2
                   for a, b in zip(ranks[0]['losses'], ranks[1]['losses'])]
    assert mean_losses == pytest.approx(single['losses'], rel=1e-5)


@pytest.fixture(scope='module')
def short_runs(module_tmp):
    """Two short runs side by side: a --launcher train.py refuses, and 4
    iterations with --amp. Name -> (work_dir, future of the
    CompletedProcess)."""
    roots = {name: module_tmp(name) for name in ('launcher', 'amp')}
    calls = {
        'launcher': functools.partial(run, [
            sys.executable, TRAIN, write_config(roots['launcher']),
            '--launcher', 'kubernetes']),
        'amp': functools.partial(
            train, write_config(roots['amp'], max_iters=4, interval=4),
            roots['amp'] / 'w', '--amp'),
    }
    results = side_by_side(calls)
    return {name: (roots[name] / 'w', results[name]) for name in calls}


def test_bad_launcher_is_refused(short_runs):
    proc = short_runs['launcher'][1].result()
    assert proc.returncode == 2
    assert "invalid choice: 'kubernetes'" in proc.stderr
    assert 'pytorch' in proc.stderr and 'slurm' in proc.stderr


# --------------------------------------------------------------- options


def test_tool_command_lines():
    saved = os.environ.pop('LOCAL_RANK', None)
    try:
        train_tool = load_tool('tools/train.py', '_tool_train')
        args = train_tool.parse_args(['c.py', '--local-rank', '1', '--resume'])
        assert args.local_rank == 1 and args.resume == 'auto'
        # Exported for mmengine when no launcher set it.
        assert os.environ['LOCAL_RANK'] == '1'
        args = train_tool.parse_args([
            'c.py', '--local_rank=0', '--resume', 'w/iter_3.pth', '--amp',
            '--auto-scale-lr', '--launcher', 'slurm', '--work-dir', 'w',
            '--cfg-options', 'a=1', 'b.c=[1,2]'
        ])
        assert (args.local_rank, args.resume, args.amp, args.auto_scale_lr,
                args.launcher, args.work_dir) == (0, 'w/iter_3.pth', True,
                                                  True, 'slurm', 'w')
        assert args.cfg_options == {'a': 1, 'b.c': [1, 2]}

        test_tool = load_tool('tools/test.py', '_tool_test')
        args = test_tool.parse_args([
            'c.py', 'ck.pth', '--out', 'o.pkl', '--show-dir', 'v',
            '--work-dir', 'w', '--launcher', 'mpi', '--local-rank', '0',
            '--cfg-options', 'test_dataloader.batch_size=1'
        ])
        assert (args.checkpoint, args.out, args.show_dir, args.work_dir,
                args.launcher) == ('ck.pth', 'o.pkl', 'v', 'w', 'mpi')
        assert args.cfg_options == {'test_dataloader.batch_size': 1}
    finally:
        os.environ.pop('LOCAL_RANK', None)
        if saved is not None:
            os.environ['LOCAL_RANK'] = saved


def train_args(**kwargs):
    args = dict(
        config='configs/foo_bar.py',
        work_dir=None,
        resume=None,
        amp=False,
        auto_scale_lr=False,
        cfg_options=None,
        launcher='none')
    args.update(kwargs)
    return argparse.Namespace(**args)


def test_merge_train_args_resume_and_work_dir():
    cfg = merge_train_args(Config(dict(load_from='pre.pth')), train_args())
    assert cfg.work_dir == osp.join('./work_dirs', 'foo_bar')
    assert not cfg.get('resume', False) and cfg.load_from == 'pre.pth'

    cfg = merge_train_args(Config(dict(load_from='pre.pth')),
                           train_args(resume='auto', work_dir='w'))
    assert cfg.resume is True and cfg.load_from is None  # latest in w
    assert cfg.work_dir == 'w'

    cfg = merge_train_args(Config(), train_args(resume='w/iter_3.pth'))
    assert cfg.resume is True and cfg.load_from == 'w/iter_3.pth'


def test_merge_train_args_options():
    cfg = Config(
        dict(
            work_dir='from_file',
            auto_scale_lr=dict(enable=False, base_batch_size=16),
            train_cfg=dict(max_iters=10)))
    merge_train_args(
        cfg,
        train_args(
            auto_scale_lr=True, cfg_options={'train_cfg.max_iters': 3}))
    assert cfg.auto_scale_lr.enable is True
    assert cfg.train_cfg.max_iters == 3
    assert cfg.work_dir == 'from_file' and cfg.launcher == 'none'

    with pytest.raises(RuntimeError, match='base_batch_size'):
        merge_train_args(Config(), train_args(auto_scale_lr=True))
    with pytest.raises(ValueError, match='launcher'):
        merge_train_args(Config(), train_args(launcher='kubernetes'))


def test_amp_on_cpu_selects_bf16_autocast():
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: --amp selects AmpOptimWrapper')
    cfg = merge_train_args(
        Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD')))),
        train_args(amp=True))
    assert cfg.optim_wrapper.type == 'CPUBF16AmpOptimWrapper'

    from mmengine.registry import OPTIM_WRAPPERS
    layer = torch.nn.Linear(4, 4)
    wrapper = OPTIM_WRAPPERS.build(
        dict(type='CPUBF16AmpOptimWrapper',
             optimizer=torch.optim.SGD(layer.parameters(), lr=0.1)))
    with wrapper.optim_context(layer):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_cpu_amp_runs_one_pixel_strided_convs_in_fp32():
    """oneDNN's bf16 weight gradient of a strided conv on a 1x1 input is
    sometimes NaN (RetinaNet's P7 on small images); the wrapper runs those
    convs in float32 and every other op still in bfloat16."""
    from mmengine.registry import OPTIM_WRAPPERS
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(256, 256, 3, stride=2, padding=1),
        torch.nn.Conv2d(256, 8, 3, stride=2, padding=1))
    wrapper = OPTIM_WRAPPERS.build(
        dict(type='CPUBF16AmpOptimWrapper',
             optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    dtypes = []
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    for _ in range(40):
        model.zero_grad()
        with wrapper.optim_context(model):
            one_pixel = model(torch.randn(2, 256, 1, 1).relu())
            larger = model(torch.randn(2, 256, 4, 4).relu())
            assert torch.is_autocast_enabled('cpu')  # back on after the hook
        assert one_pixel.dtype == torch.float32
        assert larger.dtype == torch.bfloat16
        wrapper.backward((one_pixel.float() * 1e-12).sum())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert dtypes[:2] == [torch.float32, torch.bfloat16]


def test_amp_training_on_cpu_has_finite_losses(short_runs):
    work_dir, result = short_runs['amp']
    result.result()
    losses = read_record(work_dir)['losses']
    assert len(losses) == 4
    assert all(math.isfinite(v) for v in losses)


def test_merge_test_args_loads_weights_only():
    args = argparse.Namespace(
        config='c.py',
        checkpoint='w/iter_6.pth',
        work_dir='t',
        show=False,
        show_dir=None,
        wait_time=2,
        cfg_options=None,
        launcher='none')
    cfg = merge_test_args(Config(dict(resume=True)), args)
    assert cfg.load_from == 'w/iter_6.pth' and cfg.resume is False


def test_tta_wraps_model_and_swaps_the_test_pipeline():
    args = argparse.Namespace(
        config='c.py', checkpoint='ck.pth', work_dir='t', show=False,
        show_dir=None, wait_time=2, cfg_options=None, launcher='none',
        tta=True)
    cfg = Config(
        dict(model=dict(type='Net'),
             tta_model=dict(type='SegTTAModel'),
             tta_pipeline=[dict(type='LoadImageFromFile'),
                           dict(type='TestTimeAug', transforms=[])],
             test_dataloader=dict(dataset=dict(
                 type='RepeatDataset',
                 dataset=dict(type='D', pipeline=[dict(type='Old')])))))
    merge_test_args(cfg, args)
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'Net'
    inner = cfg.test_dataloader.dataset.dataset
    assert [t['type'] for t in inner.pipeline] == ['LoadImageFromFile',
                                                   'TestTimeAug']
    with pytest.raises(RuntimeError, match='tta_model and tta_pipeline'):
        merge_test_args(Config(dict(model=dict(type='Net'))), args)


@pytest.mark.parametrize('scope, key', [('mmdet', 'test_out_dir'),
                                        ('mmpretrain', 'out_dir'),
                                        ('mmseg', None)])
def test_show_dir_follows_the_codebase(scope, key):
    cfg = Config(
        dict(
            default_scope=scope,
            default_hooks=dict(visualization=dict(type='VisualizationHook')),
            visualizer=dict(type='Visualizer')))
    enable_test_visualization(cfg, show_dir='pics')
    hook = cfg.default_hooks.visualization
    if scope == 'mmpretrain':
        assert hook.enable is True
    else:
        assert hook.draw is True
    if key is None:
        assert cfg.visualizer.save_dir == 'pics'
    else:
        assert hook[key] == 'pics'

    with pytest.raises(RuntimeError, match='visualization hook'):
        enable_test_visualization(
            Config(dict(default_scope=scope)), show_dir='pics')


def test_prediction_dump_follows_the_codebase():
    cfg = Config(
        dict(default_scope='mmseg', test_evaluator=dict(type='IoUMetric')))
    assert prepare_prediction_dump(cfg, 'pred_dir') is None
    assert cfg.test_evaluator.output_dir == 'pred_dir'
    assert cfg.test_evaluator.keep_results is True

    cfg = Config(dict(default_scope='mmengine'))
    metric = prepare_prediction_dump(cfg, 'preds.pkl')
    assert type(metric).__name__ == 'DumpResults'
    with pytest.raises(ValueError, match=r'--out must be a pickle'):
        prepare_prediction_dump(cfg, 'preds.json')
    assert prepare_prediction_dump(cfg, None) is None

    metric = prepare_prediction_dump(
        Config(dict(default_scope='mmdet')), 'dets.pkl')
    assert type(metric).__name__ == 'DumpDetResults'


# ------------------------------------------------------- CPU distributed


def test_cpu_model_wrapper_cfg():
    cfg = Config(dict(find_unused_parameters=True))
    assert cpu_model_wrapper_cfg(cfg) == dict(
        type='CPUDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=True)

    cfg = Config(
        dict(
            model_wrapper_cfg=dict(
                type='MMDistributedDataParallel', broadcast_buffers=True)))
    assert cpu_model_wrapper_cfg(cfg) == dict(
        type='CPUDistributedDataParallel', broadcast_buffers=True)

    # Another DDP subclass keeps its type; its device ids go (the config's
    # None wins over the Runner's default [LOCAL_RANK]).
    cfg = Config(
        dict(
            model_wrapper_cfg=dict(type='MMSeparateDistributedDataParallel')))
    assert cpu_model_wrapper_cfg(cfg) == dict(
        type='MMSeparateDistributedDataParallel', device_ids=None)


def test_setup_cpu_distributed_is_a_no_op_without_launcher():
    cfg = Config(dict(launcher='none'))
    assert setup_cpu_distributed(cfg) is False
    assert 'model_wrapper_cfg' not in cfg
    with pytest.raises(ValueError, match=r"launcher=.*'kubernetes'"):
        setup_cpu_distributed(Config(dict(launcher='kubernetes')))


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group (the real test is the 2-process run)."""
    import torch.distributed as dist
    dist.init_process_group(
        'gloo',
        init_method=f'file://{tmp_path}/store',
        rank=0,
        world_size=1)
    yield
    dist.destroy_process_group()


def test_cpu_wrapper_drops_device_ids_and_sync_bn(gloo_group):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.SyncBatchNorm(4))
    # What Runner.wrap_model passes: device_ids=[LOCAL_RANK].
    wrapped = CPUDistributedDataParallel(
        module=model, device_ids=[0], broadcast_buffers=False)
    assert wrapped.device_ids is None
    assert not any(
        isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())
    wrapped(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model[0].weight.grad is not None


# ---------------------------------------------------------------- scopes


def test_setup_codebase_unknown_scope_is_a_clear_error():
    with pytest.raises(ImportError, match="default_scope='mmnothing'"):
        setup_codebase(Config(dict(default_scope='mmnothing')))


@pytest.fixture
def restore_default_scope():
    """Undo the default scope a test sets (other tests expect theirs)."""
    from mmengine.registry import DefaultScope
    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


@pytest.mark.parametrize('scope, name', [('mmdet', 'RetinaNet'),
                                         ('mmseg', 'EncoderDecoder'),
                                         ('mmpretrain', 'ImageClassifier')])
def test_setup_codebase_registers_the_scope(scope, name,
                                            restore_default_scope):
    from mmengine.registry import DefaultScope
    assert setup_codebase(Config(dict(default_scope=scope))) == scope
    assert DefaultScope.get_current_instance().scope_name == scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    assert registry.MODELS.get(name) is not None
    # mmtranscnn is imported too: TransCNN resolves in the scope.
    assert registry.MODELS.get('TransCNN') is not None


@pytest.mark.perf
def test_bf16_probe_measures_the_cpu_it_runs_on():
    """Where oneDNN may not use bf16 instructions (ISA limited to AVX2, as
    on AVX2-only CPUs) bf16 autocast is emulated and measured slower."""
    from mmtranscnn.engine.amp import bf16_training_speedup
    speedup = bf16_training_speedup(repeats=1, size=8)
    assert math.isfinite(speedup) and speedup > 0
    if not re.match(r'(x86_64|amd64)$', os.uname().machine, re.I):
        return
    env = dict(os.environ, ATEN_CPU_CAPABILITY='avx2',
               ONEDNN_MAX_CPU_ISA='AVX2', MKL_ENABLE_INSTRUCTIONS='AVX2')
    out = subprocess.run(
        [sys.executable, '-c', 'from mmtranscnn.engine.amp import '
         'bf16_training_speedup as f; print(f(repeats=1, size=8))'],
        env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1


def test_main_job_trains_in_bf16_only_where_it_is_faster(monkeypatch):
    import mmtranscnn.engine.amp as amp
    main_job = load_tool('tools/main_job.py', '_tool_main_job')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for speedup, want in ((2.0, 'bf16'), (1.1, 'fp32'), (0.05, 'fp32')):
        monkeypatch.setattr(amp, 'bf16_training_speedup', lambda: speedup)
        assert main_job.choose_precision('auto') == want
    monkeypatch.setattr(amp, 'bf16_training_speedup',
                        lambda: pytest.fail('probed though asked for fp32'))
    assert main_job.choose_precision('fp32') == 'fp32'
    assert main_job.choose_precision('bf16') == 'bf16'
    with pytest.raises(ValueError, match="precision must be one of"):
        main_job.choose_precision('fp16')
    commands = []
    monkeypatch.setattr(main_job.subprocess, 'run',
                        lambda cmd, **kw: commands.append(cmd))
    main_job.train('w', [], 'bf16')
    main_job.train('w', [], 'fp32')
    assert '--amp' in commands[0] and '--amp' not in commands[1]


# -- tools/analysis_tools: plot_scaling reads scale_benchmark; get_flops ----
def load_analysis_tool(name):
    """Import tools/analysis_tools/<name>.py with its folder first on the
    path, as Python runs it (it imports ``speed_harness`` from there)."""
    return load_tool(f'tools/analysis_tools/{name}.py',
                     f'_analysis_tool_{name}', tool_dir_on_path=True)


def scale_benchmark_rows():
    """Rows as scale_benchmark.py's children return them, one skipped."""
    rows = [dict(model='TransCNN-Base', mode='hierarchical', size=s,
                 grid_sizes='((16,), (8,), (4,), 0)', device='cpu',
                 gflops=s / 10, peak_mem_mb=s / 2, median_s=s / 500,
                 min_s=s / 510, max_s=s / 490, repeats=1,
                 loadavg=[0.5, 0.6]) for s in (64, 128)]
    rows.append(dict(model='Plain-Attention', mode='plain', size=128,
                     skipped='N^2 attention alone ~9 GFLOPs'))
    return rows


def test_plot_scaling_reads_scale_benchmark_json(tmp_path, monkeypatch):
    bench = load_analysis_tool('scale_benchmark')
    plot = load_analysis_tool('plot_scaling')
    # The machine description without its oneDNN probe (a subprocess).
    monkeypatch.setitem(sys.modules, 'speed_harness', argparse.Namespace(
        machine_info=lambda: dict(cpu='test CPU', torch='t', date='d')))
    data = tmp_path / 'scale.json'
    args = argparse.Namespace(json=str(data), threads=1, sizes=[64, 128])
    bench.write_json(args, scale_benchmark_rows())
    rows, info = plot.load_measurements(str(data))
    assert [r['model'] for r in rows] == ['TransCNN-Base'] * 2 + [
        'Plain-Attention']
    assert info['cpu'] == 'test CPU' and info['threads'] == 1
    assert (info['load_min'], info['load_max']) == (0.5, 0.6)
    out = tmp_path / 'scale.png'
    plot.main(['--out', str(out), '--from-json', str(data)])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_plot_scaling_reads_a_bare_list_of_scale_benchmark_rows(tmp_path):
    """The layout scale_benchmark.py --json wrote before it named models:
    a list of rows with a ``mode`` and no machine description."""
    plot = load_analysis_tool('plot_scaling')
    rows = [{k: v for k, v in r.items() if k not in ('model', 'loadavg')}
            for r in scale_benchmark_rows()]
    data = tmp_path / 'old.json'
    data.write_text(json.dumps(rows))
    loaded, info = plot.load_measurements(str(data))
    assert [r['model'] for r in loaded] == ['TransCNN-Base'] * 2 + [
        'Plain-Attention']
    assert info['cpu'] == 'unknown CPU'
    plot.main(['--out', str(tmp_path / 'old.png'), '--from-json',
               str(data)])
    assert (tmp_path / 'old.png').exists()
    data.write_text(json.dumps([dict(size=64, median_s=1.)]))
    with pytest.raises(ValueError, match='neither a model nor a mode'):
        plot.load_measurements(str(data))


def test_get_flops_is_the_same_in_repeated_runs(capsys):
    """A two-stage detector's count depends on its random initial weights
    (they decide how many proposals reach the RoI heads): seeded, two runs
    in one process, where the global RNG has moved on, agree."""
    get_flops = load_analysis_tool('get_flops')
    config = osp.join(REPO_DIR, 'configs', 'tiny',
                      'mask_rcnn_transcnn_small_shapes.py')
    counts = []
    for _ in range(2):
        torch.rand(7)  # moves the global RNG, as anything before would
        get_flops.main([config, '--shape', '64'])
        out = capsys.readouterr().out
        counts.append(re.search(r'FLOPs: ([\d.]+) G', out).group(1))
        assert 'Seed: 0' in out
    assert counts[0] == counts[1]


def test_tools_refuse_a_malicious_checkpoint(tmp_path):
    """tools/test.py and tools/train.py --resume on a checkpoint whose
    pickle runs code: both stop with torch's refusal; nothing runs."""
    from toy_tools_modules import ToyRegressor
    marker = tmp_path / 'pwned'
    checkpoint = str(tmp_path / 'evil.pth')
    torch.save(dict(state_dict=ToyRegressor().state_dict(),
                    meta=dict(note=CodeOnLoad(str(marker)))), checkpoint)
    config = write_config(tmp_path, max_iters=2, interval=1)
    for cmd in ([TEST, config, checkpoint],
                [TRAIN, config, '--resume', checkpoint]):
        proc = run([sys.executable, *cmd, '--work-dir',
                    str(tmp_path / 'work')])
        assert proc.returncode != 0
        assert 'Weights only load failed' in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()
