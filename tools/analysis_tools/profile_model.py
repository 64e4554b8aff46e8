"""Where the time of one benchmark step goes (torch.profiler).

Builds the same model, input and step as ``benchmark.py`` (through
``speed_harness.py`` beside this script), runs ``--warmup`` untimed steps, then
profiles ``--steps`` steps and prints

* the time per step split into kinds of work (convolutions, linear layers,
  attention, norms, data movement, element-wise, pooling, the rest), from
  the self time of every aten operator;
* the ``--top`` operators by self time.

Usage:
    python tools/analysis_tools/profile_model.py TransCNN-Base \
        [--case backbone-224|backbone-det|retinanet-infer|retinanet-train] \
        [--threads 2] [--steps 3] [--top 25]
"""
import argparse
import os
from collections import defaultdict

from speed_harness import (BACKBONES, CASES, DETECTORS, Job,
                           add_system_malloc_argument, build_step,
                           keep_freed_memory_for)

#: kind of work -> substrings of aten operator names, first match wins.
CATEGORIES = [
    ('attention (SDPA)', ('scaled_dot_product', 'flash_attention',
                          '_efficient_attention', 'softmax')),
    ('convolution', ('conv', 'thnn_conv')),
    ('linear / matmul', ('addmm', 'aten::mm', 'bmm', 'matmul', 'linear',
                         'baddbmm')),
    ('norm', ('batch_norm', 'layer_norm', 'group_norm', 'native_norm')),
    ('pooling', ('pool',)),
    ('data movement', ('copy_', 'clone', 'contiguous', 'cat', 'pad',
                       'index', 'fill_', 'zero_', 'empty', 'as_strided',
                       'scatter', 'gather', 'masked_fill', 'to_copy',
                       'upsample', 'roll')),
    ('optimizer', ('adam', '_foreach')),
    ('element-wise', ('add', 'mul', 'sub', 'div', 'silu', 'gelu', 'relu',
                      'sigmoid', 'exp', 'sum', 'mean', 'max', 'where',
                      'neg', 'sqrt', 'rsqrt', 'pow', 'clamp', 'threshold',
                      'dropout', 'lerp')),
]


def categorise(name: str) -> str:
    """The kind of work an aten operator name stands for."""
    low = name.lower()
    for category, keys in CATEGORIES:
        if any(k in low for k in keys):
            return category
    return 'other'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', choices=sorted(set(BACKBONES) |
                                                set(DETECTORS)))
    parser.add_argument('--case', default='backbone-224', choices=list(CASES))
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'],
                        help='bf16: the step under CPU bfloat16 autocast')
    add_system_malloc_argument(parser)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--top', type=int, default=25)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[var] = str(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(args.threads)
    # Weight initialisation logs every parameter; keep the report readable.
    import logging

    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine').setLevel(logging.WARNING)
    kind, mode, batch, h, w, grids = CASES[args.case]
    job = Job(model=args.model, kind=kind, mode=mode, batch=batch,
              height=h, width=w, grid_sizes=grids,
              threads=args.threads, dtype=args.dtype,
              keep_freed_memory=not args.system_malloc).validate()
    keep_freed_memory_for(job)
    _, step = build_step(job)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    # aten operators, plus oneDNN's fused conv kernels (mkldnn::).
    events = [e for e in prof.key_averages()
              if e.key.startswith(('aten::', 'mkldnn::'))]
    per_step = 1e3 * args.steps  # profiler reports microseconds
    total = sum(e.self_cpu_time_total for e in events) / per_step
    by_kind = defaultdict(float)
    for e in events:
        by_kind[categorise(e.key)] += e.self_cpu_time_total / per_step
    print(f'{args.model}, {args.case} (batch {batch}, {h}x{w}, {mode}, '
          f'{args.dtype}), '
          f'{args.threads} threads, {args.steps} profiled steps: '
          f'{total:.0f} ms of operator self time per step')
    print(f"{'kind of work':<20} {'ms/step':>9} {'share':>7}")
    for name, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f'{name:<20} {ms:9.1f} {100 * ms / total:6.1f}%')
    print()
    print(f"{'operator':<45} {'ms/step':>9} {'calls':>7} {'share':>7}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        ms = e.self_cpu_time_total / per_step
        print(f'{e.key:<45} {ms:9.1f} {e.count // args.steps:7d} '
              f'{100 * ms / total:6.1f}%')


if __name__ == '__main__':
    main()
