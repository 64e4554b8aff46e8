"""Kernel choice by rule: under the switch, under torch's deterministic mode
and across distributed ranks the fast paths take the same kernels in every
run, so results are bit-identical between fresh processes and every rank
computes with the same kernels."""
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from mmtranscnn.models import TransCNN, fastpath

# A small arch with every block kind (stem, downsampling, hierarchical and
# plain attention, 5x5 and 3x3 IRBs).
ARCH = dict(channels=[32, 64, 64, 64], depths=[1, 1, 1, 1],
            kernel_sizes=[5, 3, 5, 3], expand_ratios=[2, 2, 2, 2],
            head_dim=32)
GRIDS = ((4, 2), 2, 2, 0)


def _no_timing(self, args):
    raise AssertionError(f'tuner {self.name!r} timed its candidates')


def _all_choices():
    return [(name, key, choice)
            for name, report in fastpath.tuning_report().items()
            for key, choice in report.items()]


def _train_step(model, x):
    sum(o.square().mean() for o in model(x)).backward()


# -- the switch ---------------------------------------------------------------
@pytest.mark.parametrize('value,expect', [('rule', 'rule'), ('RULE', 'rule'),
                                          (' measure', 'measure'),
                                          ('', 'measure')])
def test_environment_switch_values(monkeypatch, value, expect):
    monkeypatch.setenv(fastpath.CHOICE_ENV_VAR, value)
    assert fastpath._env_kernel_choice() == expect
    monkeypatch.setenv(fastpath.CHOICE_ENV_VAR, 'fastest')
    with pytest.raises(ValueError, match='MMTRANSCNN_KERNEL_CHOICE must be'):
        fastpath._env_kernel_choice()
    with pytest.raises(ValueError, match="one of \\('measure', 'rule'\\)"):
        fastpath.set_kernel_choice('timed')


def test_rule_mode_chooses_without_timing(monkeypatch):
    """Inference and training under the rule: no candidate is timed, and
    every choice is the tuner's rule."""
    monkeypatch.setattr(fastpath.ShapeTuner, '_measure', _no_timing)
    fastpath.reset_tuning()
    torch.manual_seed(0)
    model = TransCNN(ARCH, grid_sizes=GRIDS)
    x = torch.randn(1, 3, 40, 56)
    fastpath.set_kernel_choice('rule')
    try:
        with torch.no_grad():
            model.eval()(x)
        _train_step(model.train(), x)
    finally:
        fastpath.set_kernel_choice('measure')
    choices = _all_choices()
    assert {name for name, _, _ in choices} >= {
        'conv', 'linear', 'attention', 'attention-train'}
    for name, key, choice in choices:
        assert choice == (fastpath._TUNERS[name].rule(key), 'rule')


def test_rule_and_measurement_keep_their_own_choices(monkeypatch):
    """A thread choosing by rule does not take, nor replace, what was
    measured: each way keeps its own table, and nothing is measured
    twice."""
    measured = []
    real = fastpath.ShapeTuner._measure

    def counting(self, args):
        measured.append(args)
        return real(self, args)

    monkeypatch.setattr(fastpath.ShapeTuner, '_measure', counting)

    def slow(x):
        time.sleep(0.002)
        return x

    tuner = fastpath.ShapeTuner('toy', dict(slow=slow, fast=lambda x: x))
    tuner('a', 1)
    assert tuner.choices['a'] == ('fast', 'measurement')
    with fastpath.kernel_choice('rule'):
        tuner('a', 1)
        assert tuner.choices['a'] == ('slow', 'rule')  # the first, no timing
    tuner('a', 1)
    assert tuner.choices['a'] == ('fast', 'measurement')
    assert len(measured) == 1
    custom = fastpath.ShapeTuner('toy', dict(slow=slow, fast=lambda x: x),
                                 rule=lambda key: 'fast' if key > 1 else 'x')
    with fastpath.kernel_choice('rule'):
        custom(2, 0)
        assert custom.choices[2] == ('fast', 'rule')
        with pytest.raises(ValueError, match="rule of tuner 'toy' chose 'x'"):
            custom(1, 0)


def test_deterministic_mode_implies_the_rule():
    assert not fastpath.chooses_by_rule()
    torch.use_deterministic_algorithms(True)
    try:
        assert fastpath.chooses_by_rule()
    finally:
        torch.use_deterministic_algorithms(False)
    assert not fastpath.chooses_by_rule()


def test_threads_measure_each_choice_once(monkeypatch):
    """Threads meeting a new shape class at once wait for one measurement
    and take its choice."""
    measured = []
    real = fastpath.ShapeTuner._measure

    def counting(self, args):
        measured.append(args)
        time.sleep(0.01)  # give the other threads time to arrive
        return real(self, args)

    monkeypatch.setattr(fastpath.ShapeTuner, '_measure', counting)
    tuner = fastpath.ShapeTuner('toy', dict(a=lambda x: x, b=lambda x: x))
    start = threading.Barrier(4)

    def call():
        start.wait()
        tuner('key', 1)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(measured) == 1 and list(tuner.choices) == ['key']


# -- two fresh processes ------------------------------------------------------
SCRIPT = '''
import hashlib, json
import torch
from mmtranscnn.models import TransCNN, fastpath

rule_at_import = fastpath.chooses_by_rule()
torch.use_deterministic_algorithms(True)

def no_timing(self, args):
    raise AssertionError('a kernel choice was timed')

fastpath.ShapeTuner._measure = no_timing
torch.manual_seed(0)
model = TransCNN({arch!r}, grid_sizes={grids!r})
x = torch.randn(2, 3, 72, 88)
digest = hashlib.sha256()

def add(t):
    digest.update(t.detach().contiguous().numpy().tobytes())

with torch.no_grad():
    for out in model.eval()(x):
        add(out)
model.train()
outs = model(x)
sum(o.square().mean() for o in outs).backward()
for out in outs:
    add(out)
for p in model.parameters():
    add(p.grad)
by = sorted({{c.by for r in fastpath.tuning_report().values()
             for c in r.values()}})
print(json.dumps(dict(rule_at_import=rule_at_import, by=by,
                      digest=digest.hexdigest())))
'''


def _start_fresh(env_choice):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop(fastpath.CHOICE_ENV_VAR, None)
    if env_choice:
        env[fastpath.CHOICE_ENV_VAR] = env_choice
    return subprocess.Popen(
        [sys.executable, '-c', SCRIPT.format(arch=ARCH, grids=GRIDS)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process):
    out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_deterministic_mode_is_bit_identical_across_processes():
    """Eval outputs, train outputs and gradients hash the same in two fresh
    processes (run side by side, one thread each) under
    ``torch.use_deterministic_algorithms(True)``; the second also sets the
    switch in the environment (read at import)."""
    first, second = [_result(p) for p in (_start_fresh(None),
                                          _start_fresh('rule'))]
    assert not first['rule_at_import'] and second['rule_at_import']
    assert first['by'] == second['by'] == ['rule']
    assert first['digest'] == second['digest']


# -- two distributed ranks ----------------------------------------------------
SIZES = ((64, 64), (60, 76))  # per rank


def _rank(rank, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    fastpath.ShapeTuner._measure = _no_timing
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = TransCNN(ARCH, grid_sizes=GRIDS)
        x = torch.randn(1, 3, *SIZES[rank])
        with torch.no_grad():
            model.eval()(x)
        _train_step(DistributedDataParallel(model.train()), x)
        report = {name: {key: tuple(choice) for key, choice in r.items()}
                  for name, r in fastpath.tuning_report().items()}
        with open(os.path.join(out_dir, f'rank{rank}.pkl'), 'wb') as f:
            pickle.dump(report, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_distributed_ranks_choose_alike(tmp_path):
    """Two gloo ranks on different input sizes (as in detection) choose by
    rule, without timing or communicating, and agree on every shape class
    both met."""
    torch.multiprocessing.spawn(_rank, args=(_free_port(), str(tmp_path)),
                                nprocs=2, join=True)
    reports = []
    for rank in range(2):
        with open(tmp_path / f'rank{rank}.pkl', 'rb') as f:
            reports.append(pickle.load(f))
    shared = 0
    for name in set(reports[0]) | set(reports[1]):
        a, b = reports[0].get(name, {}), reports[1].get(name, {})
        for key in set(a) & set(b):
            assert a[key] == b[key], (name, key)
            shared += 1
        assert {by for _, by in list(a.values()) + list(b.values())} \
            <= {'rule'}
    assert shared >= 5
