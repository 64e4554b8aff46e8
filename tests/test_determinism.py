"""Reproducibility: under ``torch.use_deterministic_algorithms(True)`` two
fresh processes compute bit-identical outputs and gradients, and
distributed ranks compute bit-identical results for the same input,
whatever each of them ran before."""
import copy
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys

import torch

from mmtranscnn.models import TransCNN
from side_by_side import side_by_side

# A small arch with every block kind (stem, downsampling, hierarchical and
# plain attention, 5x5 and 3x3 IRBs).
ARCH = dict(channels=[32, 64, 64, 64], depths=[1, 1, 1, 1],
            kernel_sizes=[5, 3, 5, 3], expand_ratios=[2, 2, 2, 2],
            head_dim=32)
GRIDS = ((4, 2), 2, 2, 0)
SIZE = (72, 88)  # stride-4 map 18x22: no multiple of the grids
# What a process may have run before (detection batches differ in size).
WARMUPS = (None, (64, 64), (60, 76))


def _digest(model, x):
    """sha256 of the eval outputs, then the train-mode outputs and every
    parameter's gradient of one step, for input ``x``."""
    digest = hashlib.sha256()

    def add(t):
        digest.update(t.detach().contiguous().numpy().tobytes())

    with torch.no_grad():
        for out in model.eval()(x):
            add(out)
    model.train()
    model.zero_grad()
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    for out in outs:
        add(out)
    for p in model.parameters():
        add(p.grad)
    return digest.hexdigest()


def _model_and_input():
    torch.manual_seed(0)
    model = TransCNN(ARCH, grid_sizes=GRIDS)
    return model, torch.randn(2, 3, *SIZE)


def _warm_up(model, size):
    """A forward and backward on another input size, in eval and train
    mode; the weights and BN statistics are then put back as they were, so
    that only what the run left behind elsewhere could differ."""
    if size is None:
        return
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.eval()(x)
    sum(o.sum() for o in model.train()(x)).backward()
    model.load_state_dict(state)
    model.zero_grad()


# -- two fresh processes ------------------------------------------------------
SCRIPT = '''
import json, sys
import torch
sys.path.insert(0, {tests!r})
import test_determinism as t

torch.use_deterministic_algorithms(True)
model, x = t._model_and_input()
t._warm_up(model, {warmup!r})
print(json.dumps(t._digest(model, x)))
'''


def _fresh_process(warmup):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    script = SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)),
                           warmup=warmup)
    out = subprocess.run([sys.executable, '-c', script], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deterministic_mode_is_bit_identical_across_processes():
    """Eval outputs, train outputs and gradients hash the same in two fresh
    processes (run side by side, one thread each) under
    ``torch.use_deterministic_algorithms(True)``, although the second has
    run the model on another input size first."""
    futures = side_by_side({w: functools.partial(_fresh_process, w)
                            for w in WARMUPS[:2]})
    first, second = (futures[w].result() for w in WARMUPS[:2])
    assert first == second


# -- two distributed ranks ----------------------------------------------------
def _rank(rank, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2)
    try:
        model, x = _model_and_input()
        _warm_up(model, WARMUPS[1 + rank])
        ddp = DistributedDataParallel(model)
        digest = hashlib.sha256()
        with torch.no_grad():
            for out in ddp.eval()(x):
                digest.update(out.numpy().tobytes())
        # no_sync: each rank keeps its own gradients, which are compared
        with ddp.no_sync():
            outs = ddp.train()(x)
            sum(o.square().mean() for o in outs).backward()
        for t in list(outs) + [p.grad for p in model.parameters()]:
            digest.update(t.detach().contiguous().numpy().tobytes())
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(digest.hexdigest(), f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_distributed_ranks_compute_alike(tmp_path):
    """Two gloo ranks under DDP, each after a warm-up call on an input size
    of its own (as detection ranks see), compute bit-identical eval
    outputs, train outputs and (unsynchronised) gradients for the same
    input."""
    torch.multiprocessing.spawn(_rank, args=(_free_port(), str(tmp_path)),
                                nprocs=2, join=True)
    digests = [json.loads((tmp_path / f'rank{r}.json').read_text())
               for r in range(2)]
    assert digests[0] == digests[1]
