"""Peak memory and time of a TransCNN forward as the input grows.

H-MHSA exists so that memory and time grow with the number of pixels, not
its square. This prints, for TransCNN-Base at batch 1 in inference:

* ``hierarchical``: grid sizes chosen per input size by
  :func:`mmtranscnn.models.grid_sizes_for_input` (the COCO grids
  (16, 8, 4) per stage, with more levels of the same grid once a stage's
  last level would exceed 16x16 tokens; stage 5 plain, as in the paper);
* ``plain``: the same network with plain attention in every stage (grid
  sizes 0) at the sizes where it still runs in the time budget.

Every (mode, size) runs in a fresh subprocess so the peak-memory readings
do not share allocator state. CPU peak memory is the growth of the peak RSS
over the RSS before the first forward (high-water mark reset just before
it, FLOPs counted only after all timing); CUDA peak memory is
``torch.cuda.max_memory_allocated`` minus the weights.

``--json`` writes ``{'machine': ..., 'args': ..., 'rows': [...]}``, the
layout of ``plot_scaling.py``'s JSON, each row naming its ``model`` as
that script does (TransCNN-Base, Plain-Attention), so it plots with
``plot_scaling.py --from-json``.

Usage:
    python tools/analysis_tools/scale_benchmark.py [--sizes 512 1024 2048]
        [--device cpu|cuda] [--repeats 3] [--plain-max-gflops 4000]
        [--json out.json]
    python tools/analysis_tools/plot_scaling.py --out scale.png \
        --from-json out.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

#: ``mode`` -> the model name plot_scaling.py gives the same network.
MODEL_OF_MODE = {'hierarchical': 'TransCNN-Base', 'plain': 'Plain-Attention'}


def measure(args) -> dict:
    """Runs in the child process: build, measure memory, time, then count.

    Order matters: the peak RSS only goes up, so the memory step runs
    before anything else that allocates (FLOP counting traces the whole
    model and would set the high-water mark first).
    """
    import torch

    from mmtranscnn.analysis import count_flops
    from mmtranscnn.models import TransCNN, grid_sizes_for_input
    from speed_harness import measure_peak_memory
    torch.set_num_threads(args.threads)
    size = args.size
    grids = ((0, 0, 0, 0) if args.mode == 'plain' else
             grid_sizes_for_input(size, size))
    model = TransCNN('base', grid_sizes=grids).eval()
    shape = (1, 3, size, size)
    device = torch.device(args.device)
    model.to(device)
    x = torch.randn(*shape, device=device)
    sync = (torch.cuda.synchronize if device.type == 'cuda' else
            (lambda: None))
    with torch.inference_mode():
        # the memory step (and first warm-up)
        peak, _, _ = measure_peak_memory(lambda: model(x), device.type)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    # FLOPs last: tracing allocates, which must not touch the reading.
    flops = count_flops(model, shape) if args.count_flops else None
    times.sort()
    return dict(model=MODEL_OF_MODE[args.mode], mode=args.mode, size=size,
                grid_sizes=str(grids),
                device=args.device, gflops=flops / 1e9 if flops else None,
                peak_mem_mb=peak / 2**20, median_s=times[len(times) // 2],
                min_s=times[0], max_s=times[-1], repeats=args.repeats)


def plain_gflops_estimate(size: int) -> float:
    """Attention multiply-adds of the all-plain network (Eq. 4's N^2 term)."""
    depths, channels = (3, 4, 8, 3), (64, 128, 256, 512)
    total = 0
    for i, (d, c) in enumerate(zip(depths, channels)):
        n = (size // (4 * 2**i))**2
        total += d * 2 * n * n * c
    return total / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[512, 1024, 2048])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--plain-max-gflops', type=float, default=2500.,
                        help='skip plain attention where its N^2 term '
                        'exceeds this many GFLOPs (it would take minutes)')
    parser.add_argument('--json', help='also write the rows here')
    # internal: one measurement in this process
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='hierarchical',
                        help=argparse.SUPPRESS)
    parser.add_argument('--size', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--count-flops', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    rows = []
    for mode in ('hierarchical', 'plain'):
        for size in args.sizes:
            if mode == 'plain' and \
                    plain_gflops_estimate(size) > args.plain_max_gflops:
                rows.append(dict(model=MODEL_OF_MODE[mode], mode=mode,
                                 size=size, skipped=(
                                     'N^2 attention alone ~'
                                     f'{plain_gflops_estimate(size):.0f}'
                                     ' GFLOPs')))
                continue
            cmd = [sys.executable, __file__, '--child', '--mode', mode,
                   '--size', str(size), '--device', args.device,
                   '--repeats', str(args.repeats), '--threads',
                   str(args.threads), '--count-flops']
            load_before = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append(dict(model=MODEL_OF_MODE[mode], mode=mode,
                                 size=size,
                                 skipped=out.stderr.strip().splitlines()[-1]))
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                # plot_scaling.py's title reports the load around the runs.
                rows[-1]['loadavg'] = [load_before, os.getloadavg()[0]]
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f'\nTransCNN-Base forward, batch 1, {args.device}, '
          f'{args.threads} threads, median of {args.repeats}')
    print('| attention | input | grid sizes | GFLOPs | peak memory (MB) '
          '| time (s) |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        if 'skipped' in r:
            print(f"| {r['mode']} | {r['size']}² | - | - | skipped: "
                  f"{r['skipped']} | - |")
            continue
        print(f"| {r['mode']} | {r['size']}² | {r['grid_sizes']} | "
              f"{r['gflops']:.1f} | {r['peak_mem_mb']:.0f} | "
              f"{r['median_s']:.2f} |")
    by = {(r['mode'], r['size']): r for r in rows if 'skipped' not in r}
    sizes = sorted(args.sizes)
    for mode in ('hierarchical', 'plain'):
        for a, b in zip(sizes, sizes[1:]):
            if (mode, a) in by and (mode, b) in by:
                ra, rb = by[(mode, a)], by[(mode, b)]
                print(f'{mode} {b}² vs {a}² (pixels x{(b / a)**2:.0f}): '
                      f"memory x{rb['peak_mem_mb'] / ra['peak_mem_mb']:.2f}, "
                      f"time x{rb['median_s'] / ra['median_s']:.2f}, "
                      f"FLOPs x{rb['gflops'] / ra['gflops']:.2f}")
    if args.json:
        write_json(args, rows)


def write_json(args, rows) -> None:
    """Write ``rows`` to ``args.json`` as plot_scaling.py writes its own.

    Args:
        args (argparse.Namespace): this script's options.
        rows (list[dict]): the measured and skipped rows.
    """
    from speed_harness import machine_info
    info = machine_info()
    info['threads'] = args.threads
    info['command'] = ' '.join(['python'] + sys.argv)
    loads = [x for r in rows for x in r.get('loadavg', [])]
    info['load_min'] = min(loads) if loads else float('nan')
    info['load_max'] = max(loads) if loads else float('nan')
    with open(args.json, 'w') as f:
        json.dump(dict(machine=info, args=vars(args), rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
