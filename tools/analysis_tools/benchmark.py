"""Throughput and peak memory of TransCNN-Base against OpenMMLab backbones.

Measures, side by side in one run and with the same input and threads,
TransCNN-Base, mmdet's own ResNet-50, Swin-T (window 7), PVT-Small and
PVTv2-B2, and mmpretrain's ConvNeXt-T (as mmdet's ConvNeXt configs build it;
its RetinaNet is ``configs/peers/retinanet_convnext-t_fpn_1x_coco.py``):

* ``backbone-224``: the backbone at 224x224, batch 8 (TransCNN grid sizes
  (8, 4, 2, 0), the ImageNet setting);
* ``backbone-det``: the backbone at 800x1344, batch 1 (grid sizes
  (16, 8, 4, 0), the COCO setting);
* ``backbone-train-224`` (asked for by name): one backbone train step at
  224x224, batch 8;
* ``backbone-train``: one backbone train step (forward, backward of the
  summed means of the four maps, AdamW step) at 800x1344, batch 1: the
  backbone's share of a detection train step;
* ``retinanet-infer``: RetinaNet inference (``predict``, NMS included) at
  800x1344, batch 1, from each backbone's RetinaNet config (mmdet's, ours);
* ``retinanet-train``: one RetinaNet train step (forward, backward, AdamW
  step) at 800x1344, batch 1, with a few fixed boxes.

Every model is built as its registry builds it, with its own
``init_weights()``, and measured with flush-to-zero on
(``torch.set_flush_denormal(True)``): denormal floats, which Swin-T's masked
softmax makes, otherwise slow a model by up to 2x on x86 CPUs. A train
step reports, beside the growth of the resident set, the
bytes of the tensors autograd saves for backward: what a GPU would hold,
whatever the CPU allocator does.

Every (case, model) runs in its own process (``speed_harness.py`` beside
this script says in which order memory and time are taken): one memory
step, ``--warmup`` steps, then ``--repeats`` timed steps; the table gives
the median and the spread (min-max). ``--rounds N`` repeats the whole
sweep N times, models interleaved, and pools the timings, which evens out
a machine whose load drifts. On a GPU,
``--device cuda --dtypes fp32 fp16 bf16`` measures each precision
(fp16/bf16 through autocast; fp16 training with a GradScaler), and
``--batch backbone-224=64 backbone-det=2`` sets a case's batch size.

CPU figures depend on the instruction set the kernels use, so the output
says which: the CPU's model name, vendor and family/model/stepping, whether
it runs under a hypervisor, its AVX2/AVX-512/AVX512-BF16/AMX flags, the
SIMD level ATen dispatches to (``torch.backends.cpu.get_cpu_capability()``),
the ISA oneDNN uses (from its verbose output), and the ISA caps in force
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), with torch's version and
the threads. The JSON has them under ``machine`` (and each row its process's
``cpu_capability``); the markdown opens with a heading naming the date, CPU
and ISA (``--md-title`` replaces it) and a paragraph with all of them, and
every table's caption names the CPU, ISA and threads again, so a table
copied alone still says where it was measured.

Usage:
    python tools/analysis_tools/benchmark.py \
        [--cases backbone-224 backbone-det backbone-train-224 backbone-train
                 retinanet-infer retinanet-train] [--batch CASE=N ...] \
        [--models TransCNN-Base ResNet-50 Swin-T PVT-Small PVTv2-B2
                  ConvNeXt-T] \
        [--device cpu|cuda] [--dtypes fp32 ...] [--threads 2] \
        [--warmup 2] [--repeats 5] [--rounds 1] \
        [--json out.json] [--md out.md] [--md-title TITLE]

    # e.g. only the new peer against the reference, smallest case:
    python tools/analysis_tools/benchmark.py --cases backbone-224 \
        --models TransCNN-Base ConvNeXt-T
"""
import argparse
import json
import os
import statistics
import sys
import time

from speed_harness import (BACKBONES, CASES, DETECTORS, DTYPES, Job,
                           add_system_malloc_argument, machine_info,
                           run_in_subprocess)

REFERENCE = 'TransCNN-Base'
#: the cases run when --cases is not given (the 224x224 train step is
#: asked for by name, e.g. by tools/gpu_check.py)
DEFAULT_CASES = ['backbone-224', 'backbone-det', 'backbone-train',
                 'retinanet-infer', 'retinanet-train']


def case_title(case: str, batch: int) -> str:
    """Table caption of a case, e.g. 'Backbone, 224x224, batch 8,
    inference'."""
    kind, mode, _, h, w, _ = CASES[case]
    what = 'Backbone' if kind == 'backbone' else 'RetinaNet'
    how = ('train step (forward + backward + AdamW)' if mode == 'train'
           else 'inference' + (' (predict)' if kind == 'detector' else ''))
    return f'{what}, {h}x{w}, batch {batch}, {how}'


def parse_batch_overrides(items) -> dict:
    """``['backbone-224=64', ...]`` -> ``{'backbone-224': 64}``.

    Args:
        items: ``CASE=N`` strings (from ``--batch``), or None.
    """
    batches = {}
    for item in items or ():
        case, sep, value = item.partition('=')
        if not sep or case not in CASES:
            raise ValueError(f'--batch: unknown case {case!r} in {item!r}; '
                             f'allowed: {list(CASES)} as CASE=N')
        try:
            batch = int(value)
        except ValueError:
            batch = 0
        if batch < 1:
            raise ValueError(f'--batch {case}: batch must be an int >= 1, '
                             f'got {value!r}')
        batches[case] = batch
    return batches


DEFAULT_MODELS = ['TransCNN-Base', 'ResNet-50', 'Swin-T', 'PVT-Small',
                  'PVTv2-B2', 'ConvNeXt-T']

#: The targets, on the models as built: (case, other model, quantity,
#: bound). 'speed' means TransCNN-Base img/s / other's >= bound; 'memory'
#: TransCNN-Base peak memory / other's <= bound; 'saved' the same for the
#: bytes saved for backward. Against Swin-T: at least as fast at 224x224
#: (>= 1.05x) and nearly so at 800x1344 (>= 0.9x); a train step at
#: 800x1344 within 1.5x Swin-T's time, 1.25x its bytes saved for backward
#: and 1.3x its peak memory.
TARGETS = [
    ('backbone-224', 'Swin-T', 'speed', 1.05),
    ('backbone-det', 'Swin-T', 'speed', 0.9),
    ('backbone-train', 'Swin-T', 'speed', 1 / 1.5),
    ('backbone-train', 'Swin-T', 'saved', 1.25),
    ('backbone-train', 'Swin-T', 'memory', 1.3),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Speed and memory of TransCNN-Base vs OpenMMLab '
        'backbones.')
    parser.add_argument('--cases', nargs='+', default=DEFAULT_CASES,
                        choices=list(CASES))
    parser.add_argument('--batch', nargs='+', metavar='CASE=N',
                        help='override the batch size of a case, e.g. '
                        'backbone-224=64 backbone-det=2 (GPU runs)')
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS,
                        help=f'any of {sorted(DETECTORS)} (backbone cases '
                        f'also take {sorted(set(BACKBONES) - set(DETECTORS))})')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtypes', nargs='+', default=None, choices=DTYPES,
                        help='default: fp32 on CPU, fp32 fp16 bf16 on CUDA')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--channels-last', action='store_true',
                        help='run every model on channels-last tensors')
    add_system_malloc_argument(parser)
    parser.add_argument('--no-flops', action='store_true',
                        help='skip FLOP counting of the backbones')
    parser.add_argument('--timeout', type=float, default=1800,
                        help='seconds per model process')
    parser.add_argument('--json', help='write all rows and the machine here')
    parser.add_argument('--md', help='write the markdown tables here')
    parser.add_argument('--md-title',
                        help='heading of the markdown (default: the date, '
                        'CPU and ISA of the run)')
    args = parser.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ['fp32'] if args.device == 'cpu' else list(DTYPES)
    for case in args.cases:
        table = BACKBONES if CASES[case][0] == 'backbone' else DETECTORS
        bad = [m for m in args.models if m not in table]
        if bad:
            parser.error(f'--models {bad} cannot run case {case!r}; '
                         f'allowed: {sorted(table)}')
    for name in ('threads', 'repeats', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1')
    try:
        args.batches = parse_batch_overrides(args.batch)
    except ValueError as error:
        parser.error(str(error))
    return args


def _batch(args, case: str) -> int:
    return getattr(args, 'batches', {}).get(case, CASES[case][2])


def pool_rounds(rows):
    """Merge the rows of several rounds of one (case, model, dtype)."""
    ok = [r for r in rows if 'error' not in r]
    if not ok:
        return rows[-1]
    merged = dict(ok[0])
    times = sorted(t for r in ok for t in r['times_s'])
    median = statistics.median(times)
    merged.update(
        times_s=times, median_s=median, min_s=times[0], max_s=times[-1],
        img_per_s=ok[0]['job']['batch'] / median,
        peak_mem_mb=statistics.median(r['peak_mem_mb'] for r in ok),
        saved_mb=(statistics.median(r['saved_mb'] for r in ok)
                  if ok[0].get('saved_mb') is not None else None),
        peak_mem_mb_all=[r['peak_mem_mb'] for r in ok],
        loadavg_before=max(r['loadavg_before'][0] for r in ok),
        loadavg_after=max(r['loadavg_after'][0] for r in ok),
        rounds=len(ok))
    return merged


def fmt_row(r, ref):
    """One table row: the model as built."""
    name = r['job']['model']
    if 'error' in r:
        return (f"| {name} | - | - | - | - | - | - | - | "
                f"failed: {r['error']} |")
    batch = r['job']['batch']
    speed = r['img_per_s']
    slow, fast = batch / r['max_s'], batch / r['min_s']
    gflops = f"{r['gflops']:.2f}" if r.get('gflops') else '-'
    saved = (f"{r['saved_mb']:.0f}" if r.get('saved_mb') is not None
             else '-')
    ratio = '-'
    if ref is not None and 'error' not in ref and name != REFERENCE:
        ratio = (f"{ref['img_per_s'] / speed:.2f}x / "
                 f"{ref['peak_mem_mb'] / r['peak_mem_mb']:.2f}x")
        if r.get('saved_mb') and ref.get('saved_mb'):
            ratio += f" / {ref['saved_mb'] / r['saved_mb']:.2f}x"
    return (f"| {name} | {r['params_m']:.1f} | {gflops} | {speed:.2f} | "
            f"{slow:.2f}-{fast:.2f} | "
            f"{1e3 * r['median_s']:.0f} | {r['peak_mem_mb']:.0f} | "
            f"{saved} | {ratio} |")


def isa_summary(info):
    """'ATen AVX512, oneDNN <its ISA>' (the parts known)."""
    parts = []
    if info.get('aten_cpu_capability'):
        parts.append(f"ATen {info['aten_cpu_capability']}")
    if info.get('onednn_isa'):
        parts.append(f"oneDNN {info['onednn_isa']}")
    return ', '.join(parts) or 'ISA unknown'


def default_title(info):
    return f"Benchmark {info['date']}: {info['cpu']}, {isa_summary(info)}"


def cpu_paragraph(info):
    """The CPU, its ISA and the ISA settings in force, in words (header);
    fields a machine description lacks are left out."""
    cpu = info['cpu']
    details = [d for d in (info.get('cpu_vendor'),
                           info.get('cpu_signature')) if d]
    if info.get('hypervisor'):
        details.append('under a hypervisor')
    text = f"CPU: {cpu}" + (f" ({', '.join(details)})" if details else '')
    flags = info.get('isa_flags')
    if flags:
        have = [f for f, on in flags.items() if on]
        lack = [f for f, on in flags.items() if not on]
        text += ('; flags: ' + (' '.join(have) if have else 'none of '
                                'interest') +
                 (f" (no {', '.join(lack)})" if lack else ''))
    text += f". ATen dispatch: {info.get('aten_cpu_capability') or '?'}"
    if info.get('onednn_version') or info.get('onednn_isa'):
        name = ' '.join(['oneDNN'] + ([info['onednn_version']]
                                      if info.get('onednn_version') else []))
        text += f"; {name} ISA: {info.get('onednn_isa') or '?'}"
    env = info.get('isa_env')
    if env:
        text += '; ISA settings in the environment: ' + ', '.join(
            f"{k}={v if v is not None else 'unset'}" for k, v in env.items())
    return text + '.'


def markdown(results, args, info):
    threads = f'{args.threads} threads'
    lines = [
        f"### {getattr(args, 'md_title', None) or default_title(info)}", '',
        f"Measured {info['date']} on {info['cpu']} ({info['logical_cpus']} "
        f"logical CPUs, {info['mem_gb']:.0f} GiB"
        + (f", GPU {info['gpu']}" if 'gpu' in info else '') +
        f"), torch {info['torch']}, device {args.device}, {threads}, "
        f"{args.warmup} warm-up + {args.repeats} timed steps x "
        f"{args.rounds} round(s) per model, each model in its own process"
        + ('' if args.device != 'cpu' else
           ' (glibc malloc as the system sets it)'
           if getattr(args, 'system_malloc', False) else
           ' (in train steps freed memory is kept for reuse, as '
           'tools/train.py does)')
        + '; every model as its registry builds it, with its own '
        'init_weights() and flush-to-zero on (torch.set_flush_denormal). '
        f"Load average (1 min) during the run: {info['load_min']:.2f} to "
        f"{info['load_max']:.2f}.", '', cpu_paragraph(info), ''
    ]
    where = f"{info['cpu']}, {isa_summary(info)}, {threads}"
    if args.device == 'cuda' and info.get('gpu'):
        where = f"{info['gpu']}; {where}"
    for case in args.cases:
        for dtype in args.dtypes:
            rows = [results[(case, m, dtype)] for m in args.models
                    if (case, m, dtype) in results]
            ref = results.get((case, REFERENCE, dtype))
            lines += [
                f'**{case_title(case, _batch(args, case))}, {dtype}** '
                f'({where})', '',
                '| model | params (M) | GFLOPs | img/s (median) | img/s '
                "(min-max) | latency "
                '(ms) | peak memory (MB) | saved for backward (MB) | '
                f'{REFERENCE} speed / memory (/ saved) ratio |',
                '|---|---|---|---|---|---|---|---|---|'
            ] + [fmt_row(r, ref) for r in rows] + [
                '', 'Every model as built. Peak memory: growth of the '
                'resident set over the '
                'step; saved for backward: the bytes of the tensors '
                'autograd keeps (what a GPU would hold).', ''
            ]
    lines += ['Targets (the models as built, against Swin-T):', '']
    for line in target_lines(results, args):
        lines.append(f'- {line}')
    lines.append('')
    return '\n'.join(lines)


def target_lines(results, args):
    out = []
    for case, other, what, bound in TARGETS:
        key_ref, key_other = (case, REFERENCE, 'fp32'), (case, other, 'fp32')
        if key_ref not in results or key_other not in results:
            continue
        a, b = results[key_ref], results[key_other]
        if 'error' in a or 'error' in b:
            out.append(f'{case}: {what} vs {other}: not measured')
            continue
        if what == 'speed':
            ratio = a['img_per_s'] / b['img_per_s']
            ok = ratio >= bound
            text = f'img/s {ratio:.2f}x {other} (target >= {bound:.2f}x)'
        elif what == 'saved':
            if a.get('saved_mb') is None or b.get('saved_mb') is None:
                out.append(f'{case}: saved for backward vs {other}: not '
                           'measured')
                continue
            ratio = a['saved_mb'] / b['saved_mb']
            ok = ratio <= bound
            text = (f"saved for backward {a['saved_mb']:.0f} MB = "
                    f"{ratio:.2f}x {other}'s (target <= {bound}x)")
        else:
            ratio = a['peak_mem_mb'] / b['peak_mem_mb']
            ok = ratio <= bound
            text = (f"peak memory {a['peak_mem_mb']:.0f} MB = {ratio:.2f}x "
                    f"{other}'s (target <= {bound}x)")
        out.append(f"{case}: {text}: {'met' if ok else 'MISSED'}")
    return out


def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    info['threads'] = args.threads
    info['command'] = ' '.join([os.path.basename(sys.executable)] +
                               sys.argv)
    loads = [os.getloadavg()[0]]
    raw = {}
    for rnd in range(args.rounds):
        for case in args.cases:
            kind, mode, batch, h, w, grids = CASES[case]
            batch = args.batches.get(case, batch)
            for dtype in args.dtypes:
                for model in args.models:
                    job = Job(model=model, kind=kind, mode=mode, batch=batch,
                              height=h, width=w, grid_sizes=grids,
                              device=args.device, dtype=dtype,
                              threads=args.threads, warmup=args.warmup,
                              repeats=args.repeats,
                              channels_last=args.channels_last,
                              keep_freed_memory=not args.system_malloc,
                              flops=(not args.no_flops and rnd == 0
                                     and kind == 'backbone'
                                     and dtype == args.dtypes[0]))
                    row = run_in_subprocess(job, timeout=args.timeout)
                    loads += [row['loadavg_before'][0],
                              row['loadavg_after'][0]]
                    raw.setdefault((case, model, dtype), []).append(row)
                    short = {k: row.get(k) for k in (
                        'img_per_s', 'median_s', 'peak_mem_mb', 'saved_mb',
                        'gflops', 'error')}
                    print(f'[round {rnd + 1}] {case} {model} {dtype}: '
                          f'{json.dumps(short)} load '
                          f"{row['loadavg_before'][0]:.2f}->"
                          f"{row['loadavg_after'][0]:.2f}",
                          file=sys.stderr, flush=True)
    results = {}
    for key, rows in raw.items():
        results[key] = pool_rounds(rows)
        if 'error' not in results[key] and rows[0].get('gflops'):
            results[key]['gflops'] = rows[0]['gflops']
    info['load_min'], info['load_max'] = min(loads), max(loads)
    text = markdown(results, args, info)
    print(text)
    if args.md:
        with open(args.md, 'w') as f:
            f.write(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, args=vars(args),
                           targets=target_lines(results, args),
                           rows=[dict(case=k[0], **v)
                                 for k, v in results.items()]),
                      f, indent=1)


if __name__ == '__main__':
    t0 = time.time()
    main()
    print(f'benchmark took {time.time() - t0:.0f} s', file=sys.stderr)
