"""Latency and memory versus input side, as a PNG (and JSON).

Three panels, log-log: latency and peak memory of backbone inference, and
the bytes one train-mode forward saves for backward (what a GPU holds for
training). Backbone inference at batch 1 on square inputs from 256 to 2048 for
TransCNN-Base (grid sizes per input from
:func:`mmtranscnn.models.grid_sizes_for_input`: the COCO grids (16, 8, 4)
with more levels of the same grid for large maps, stage 5 plain), mmdet's
Swin-T and PVT-Small, and TransCNN-Base with plain attention in every stage
(grid sizes 0). Every point runs in its own process
(``speed_harness.py`` beside this script: memory step first, then warm-up
and timing). A model's next, larger size is skipped when extrapolating its last
two points predicts more than ``--max-seconds`` for the run or more than
``--max-mem-gb`` of memory; skipped points are listed in the JSON.

``--from-json`` re-plots saved measurements: this script's JSON, or the
``--json`` output of ``scale_benchmark.py`` beside it (its hierarchical and
plain rows are TransCNN-Base and Plain-Attention here; it measures no bytes
saved for backward, so that panel stays empty).

Usage:
    python tools/analysis_tools/plot_scaling.py --out docs/scaling.png \
        [--sizes 256 512 768 1024 1536 2048] [--threads 2] [--repeats 3]
    python tools/analysis_tools/plot_scaling.py --out scale.png \
        --from-json scale.json
"""
import argparse
import json
import math
import os
import sys
import time

from speed_harness import Job, machine_info, run_in_subprocess

MODELS = ['TransCNN-Base', 'Swin-T', 'PVT-Small', 'Plain-Attention']
STYLE = {
    'TransCNN-Base': dict(color='tab:red', marker='o'),
    'Swin-T': dict(color='tab:blue', marker='s'),
    'PVT-Small': dict(color='tab:green', marker='^'),
    'Plain-Attention': dict(color='tab:gray', marker='x', linestyle='--'),
}
LABEL = {'Plain-Attention': 'TransCNN-Base, plain attention'}
#: scale_benchmark.py's ``mode`` of a row -> the model name used here.
SCALE_BENCHMARK_MODES = {'hierarchical': 'TransCNN-Base',
                         'plain': 'Plain-Attention'}
#: Title fields a saved file may lack (scale_benchmark.py's bare list of
#: rows carries no machine description).
UNKNOWN_MACHINE = dict(cpu='unknown CPU', threads='?', torch='?',
                       date='date unknown', load_min=float('nan'),
                       load_max=float('nan'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='docs/scaling.png',
                        help='PNG path; the measurements go next to it '
                        'as .json')
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[256, 512, 768, 1024, 1536, 2048])
    parser.add_argument('--models', nargs='+', default=MODELS,
                        choices=MODELS)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--max-seconds', type=float, default=300,
                        help='skip a point predicted to run longer')
    parser.add_argument('--max-mem-gb', type=float, default=12,
                        help='skip a point predicted to need more memory')
    parser.add_argument('--from-json', help='re-plot saved measurements')
    args = parser.parse_args(argv)
    if min(args.sizes) < 32:
        parser.error('--sizes must be >= 32')
    return args


def predict(points, size):
    """Extrapolate (latency, memory) to ``size`` from measured points, with
    the growth exponent in pixels of the last two (at least linear)."""
    (s1, t1, m1), (s2, t2, m2) = points[-2:] if len(points) > 1 else (
        points[-1], points[-1])
    grow = (size / s2)**2
    if s1 == s2:
        return t2 * grow**2, m2 * grow**2  # one point: assume quadratic
    px = math.log((s2 / s1)**2)
    et = max(1., math.log(max(t2, 1e-9) / max(t1, 1e-9)) / px)
    em = max(1., math.log(max(m2, 1e-9) / max(m1, 1e-9)) / px)
    return t2 * grow**et, m2 * grow**em


def grids_for(model, size):
    if model != 'TransCNN-Base':
        return None
    from mmtranscnn.models import grid_sizes_for_input
    return [list(g) if isinstance(g, tuple) else g
            for g in grid_sizes_for_input(size, size)]


def measure(args):
    rows = []
    for model in args.models:
        points = []
        for size in sorted(args.sizes):
            if points:
                t_pred, m_pred = predict(points, size)
                steps = 1 + args.warmup + args.repeats
                if t_pred * steps > args.max_seconds or \
                        m_pred > args.max_mem_gb * 1024:
                    rows.append(dict(model=model, size=size, skipped=(
                        f'predicted {t_pred:.0f} s/forward, '
                        f'{m_pred / 1024:.1f} GB')))
                    print(f'{model} {size}: skipped ({rows[-1]["skipped"]})',
                          file=sys.stderr, flush=True)
                    continue
            job = Job(model=model, batch=1, height=size, width=size,
                      grid_sizes=grids_for(model, size),
                      threads=args.threads, warmup=args.warmup,
                      repeats=args.repeats,
                      extra=dict(saved_for_backward=True))
            row = run_in_subprocess(job, timeout=args.max_seconds * 2)
            if 'error' in row:
                rows.append(dict(model=model, size=size,
                                 skipped=row['error']))
            else:
                rows.append(dict(model=model, size=size,
                                 grid_sizes=job.grid_sizes,
                                 median_s=row['median_s'],
                                 min_s=row['min_s'], max_s=row['max_s'],
                                 peak_mem_mb=row['peak_mem_mb'],
                                 saved_mb=row.get('saved_mb'),
                                 loadavg=[row['loadavg_before'][0],
                                          row['loadavg_after'][0]]))
                points.append((size, row['median_s'], row['peak_mem_mb']))
            print(f'{model} {size}: {json.dumps(rows[-1])}',
                  file=sys.stderr, flush=True)
    return rows


def load_measurements(path):
    """Rows and machine description of a saved run.

    Args:
        path (str): a JSON written by this script or by
            ``scale_benchmark.py --json``: ``{'machine': ..., 'rows': [...]}``
            or a bare list of rows; rows that name a ``mode`` (hierarchical,
            plain) instead of a ``model`` get the model name used here.

    Returns:
        tuple[list[dict], dict]: the rows and the machine description.
    """
    with open(path) as f:
        saved = json.load(f)
    if isinstance(saved, list):
        saved = dict(rows=saved)
    if not isinstance(saved, dict) or not isinstance(saved.get('rows'), list):
        raise ValueError(f'{path}: expected the JSON of plot_scaling.py or '
                         f'scale_benchmark.py --json (a dict with "rows", '
                         f'or a list of rows)')
    rows = []
    for row in saved['rows']:
        if 'model' not in row:
            if row.get('mode') not in SCALE_BENCHMARK_MODES:
                raise ValueError(f'{path}: a row names neither a model nor '
                                 f'a mode of {sorted(SCALE_BENCHMARK_MODES)}:'
                                 f' {row}')
            row = dict(row, model=SCALE_BENCHMARK_MODES[row['mode']])
        rows.append(row)
    info = dict(UNKNOWN_MACHINE, **saved.get('machine', {}))
    return rows, info


def plot(rows, info, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    models = list(dict.fromkeys(r['model'] for r in rows))
    for model in models:
        pts = [r for r in rows if r['model'] == model and 'median_s' in r]
        if not pts:
            continue
        xs = [r['size'] for r in pts]
        kw = dict(STYLE.get(model, {}), label=LABEL.get(model, model))
        axes[0].plot(xs, [r['median_s'] for r in pts], **kw)
        axes[0].fill_between(xs, [r['min_s'] for r in pts],
                             [r['max_s'] for r in pts],
                             color=kw.get('color'), alpha=.15)
        axes[1].plot(xs, [r['peak_mem_mb'] / 1024 for r in pts], **kw)
        saved = [r for r in pts if r.get('saved_mb')]
        if saved:
            axes[2].plot([r['size'] for r in saved],
                         [r['saved_mb'] / 1024 for r in saved], **kw)
    sizes = sorted({r['size'] for r in rows})
    for ax, ylabel in zip(axes, ['latency per image (s)',
                                 'peak memory growth (GB)',
                                 'saved for backward (GB)']):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel('input side (square image, pixels)')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=.3)
    # Guide: growth proportional to the pixel count, through TransCNN-Base's
    # first point.
    ref = [r for r in rows if r['model'] == 'TransCNN-Base' and
           'median_s' in r]
    if ref:
        s0 = ref[0]['size']
        firsts = [ref[0]['median_s'], ref[0]['peak_mem_mb'] / 1024,
                  (ref[0].get('saved_mb') or 0) / 1024]
        for ax, y0 in zip(axes, firsts):
            if y0:
                ax.plot(sizes, [y0 * (s / s0)**2 for s in sizes], ':',
                        color='black', alpha=.5, label='∝ pixels')
    for ax in axes:
        ax.legend(loc='upper left', fontsize=8)
    axes[0].set_title('Backbone inference, batch 1')
    axes[1].set_title('Peak RSS growth during inference')
    axes[2].set_title('Bytes a train-mode forward keeps for backward')
    fig.suptitle(
        f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
        f"{info['date']} (load avg {info['load_min']:.1f}-"
        f"{info['load_max']:.1f})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    stem = os.path.splitext(args.out)[0]
    if args.from_json:
        rows, info = load_measurements(args.from_json)
    else:
        info = machine_info()
        info['threads'] = args.threads
        info['command'] = ' '.join(['python'] + sys.argv)
        rows = measure(args)
        loads = [x for r in rows for x in r.get('loadavg', [])]
        info['load_min'] = min(loads) if loads else float('nan')
        info['load_max'] = max(loads) if loads else float('nan')
        with open(stem + '.json', 'w') as f:
            json.dump(dict(machine=info, args=vars(args), rows=rows), f,
                      indent=1)
    plot(rows, info, args.out)
    print(f'wrote {args.out}' + ('' if args.from_json else
                                 f' and {stem}.json'))
    print('| model | ' + ' | '.join(f'{s}²' for s in sorted(
        {r['size'] for r in rows})) + ' |')
    sizes = sorted({r['size'] for r in rows})
    print('|---|' + '---|' * len(sizes))
    for model in dict.fromkeys(r['model'] for r in rows):
        cells = []
        for s in sizes:
            r = next((r for r in rows if r['model'] == model
                      and r['size'] == s), None)
            cells.append('-' if r is None or 'median_s' not in r else
                         f"{r['median_s']:.2f} s / "
                         f"{r['peak_mem_mb']:.0f} MB" + (
                             f" / {r['saved_mb']:.0f} MB saved"
                             if r.get('saved_mb') else ''))
        print(f'| {model} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    t0 = time.time()
    main()
    print(f'took {time.time() - t0:.0f} s', file=sys.stderr)
