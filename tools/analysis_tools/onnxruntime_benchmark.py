"""CPU inference of backbones: PyTorch eager against ONNX Runtime.

Each backbone (TransCNN-Base and Swin-T by default, as built by
``speed_harness.py``) is exported the way ``tools/deployment/deploy.py``
exports a model: mmdeploy's ``export``, set up by the deploy tool's
``mmdeploy_compat.py`` (the TorchScript exporter), with the ONNX settings
of ``configs/deploy/`` (opset 17, dynamic batch, height and width). Two
routes then run the same input in interleaved rounds (each round times
every route in turn, so drift of a shared machine falls on all of them
alike), each with ``--threads`` threads (2 by default),
fp32:

* ``pytorch``: the model as built, ``torch.inference_mode()`` (what
  mmdet's and mmseg's own tools, and ours, run);
* ``onnxruntime``: an ONNX Runtime session of the exported graph (CPU
  execution provider, all graph optimisations).

Printed and written (``--json``, ``--md``): the median seconds per batch
and images per second of each route, ONNX Runtime's speed-up over
PyTorch, and the relative error of ONNX Runtime's output (largest
difference over largest magnitude), with the CPU and the versions. Each
(model, case) runs in its own interpreter.

Example::

    python tools/analysis_tools/onnxruntime_benchmark.py \\
        --json work_dirs/ort.json --md work_dirs/ort.md
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

import speed_harness  # noqa: E402  (this folder is first on sys.path)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEPLOY_CFG = osp.join(ROOT, 'configs', 'deploy',
                      'detection_onnxruntime_dynamic.py')
DEPLOY_TOOLS = osp.join(ROOT, 'tools', 'deployment')
DEFAULT_MODELS = ('TransCNN-Base', 'Swin-T')
DEFAULT_CASES = ('backbone-224', 'backbone-det')
ROUTES = ('pytorch', 'onnxruntime')
RESULT_PREFIX = 'ORT_BENCHMARK '


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='PyTorch eager against ONNX Runtime on the CPU')
    parser.add_argument(
        '--models', nargs='+', default=list(DEFAULT_MODELS),
        choices=sorted(speed_harness.BACKBONES),
        help=f'backbones (default: {" ".join(DEFAULT_MODELS)})')
    cases = sorted(name for name, case in speed_harness.CASES.items()
                   if case[:2] == ('backbone', 'infer'))
    parser.add_argument(
        '--cases', nargs='+', default=list(DEFAULT_CASES), choices=cases,
        help='input cases of speed_harness.py (default: '
        f'{" ".join(DEFAULT_CASES)}: batch 8 at 224x224, batch 1 at '
        '800x1344)')
    parser.add_argument('--threads', type=int, default=2,
                        help='threads of each route (default: 2)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='interleaved rounds (default: 3)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed runs per route and round (default: 3)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed runs per route first (default: 1)')
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--md', help='write a Markdown table here')
    parser.add_argument('--timeout', type=float, default=3600,
                        help='seconds per (model, case) (default: 3600)')
    parser.add_argument('--job', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for field in ('threads', 'rounds', 'repeats'):
        if getattr(args, field) < 1:
            parser.error(f'--{field} must be at least 1, got '
                         f'{getattr(args, field)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be 0 or more, got {args.warmup}')
    return args


# -- one (model, case), in its own interpreter -------------------------------
def export_backbone(model, x, path: str) -> list:
    """The backbone through mmdeploy's ``export`` with the deploy config's
    ONNX settings; returns the output names."""
    import torch
    sys.path.insert(0, DEPLOY_TOOLS)
    import mmdeploy_compat
    mmdeploy_compat.setup()  # what the deploy tool sets up in its process
    from mmdeploy.apis.onnx import export
    from mmdeploy.utils import get_onnx_config, load_config

    (deploy_cfg, ) = load_config(DEPLOY_CFG)
    onnx_cfg = get_onnx_config(deploy_cfg)
    with torch.no_grad():
        outputs = model(x)
    names = [f'out{i}' for i in range(len(outputs))]
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    axes.update({n: {0: 'batch', 2: f'{n}_h', 3: f'{n}_w'} for n in names})
    export(model, x, path[:-len('.onnx')],
           backend=deploy_cfg.backend_config.type, input_names=['input'],
           output_names=names, context_info=dict(deploy_cfg=deploy_cfg),
           opset_version=onnx_cfg['opset_version'], dynamic_axes=axes,
           keep_initializers_as_inputs=False)
    return names


def run_job(job: dict) -> dict:
    """Export, then time the routes in interleaved rounds."""
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(job['threads'])
    _, _, batch, height, width, grids = speed_harness.CASES[job['case']]
    torch.manual_seed(0)
    model = speed_harness.build_backbone(job['model'], grids)
    model.eval()  # (mmdet's Swin returns None from train(): no chaining)
    x = torch.randn(batch, 3, height, width)
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'backbone.onnx')
        start = time.perf_counter()
        names = export_backbone(model, x, path)
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = job['threads']
        options.inter_op_num_threads = 1
        options.graph_optimization_level = \
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options,
                                       providers=['CPUExecutionProvider'])
    feed = {'input': x.numpy()}

    def eager(module):
        def run():
            with torch.inference_mode():
                return [o.contiguous().numpy() for o in module(x)]
        return run

    routes = {'pytorch': eager(model),
              'onnxruntime': lambda: session.run(names, feed)}
    outputs = {name: run() for name, run in routes.items()}
    rel = {name: max(
        float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
        for a, b in zip(outputs['pytorch'], outputs[name]))
        for name in ROUTES[1:]}
    for _ in range(job['warmup']):
        for run in routes.values():
            run()
    times = {name: [] for name in routes}
    for r in range(job['rounds']):
        order = ROUTES[r % len(ROUTES):] + ROUTES[:r % len(ROUTES)]
        for name in order:
            for _ in range(job['repeats']):
                start = time.perf_counter()
                routes[name]()
                times[name].append(time.perf_counter() - start)
    return dict(model=job['model'], case=job['case'], batch=batch,
                height=height, width=width, export_s=export_s,
                rel_error=rel, times=times,
                median_s={k: statistics.median(v) for k, v in times.items()},
                ort=ort.__version__)


def run_in_subprocess(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, osp.abspath(__file__), '--job', json.dumps(job)]
    env = dict(os.environ, OMP_NUM_THREADS=str(job['threads']))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f'{job["model"]} {job["case"]} failed:\n'
                       f'{proc.stdout[-2000:]}{proc.stderr[-4000:]}')


# -- the table ---------------------------------------------------------------
def rows(results):
    """(model, input, then for each route: s/batch, img/s; ORT's speed-up
    over PyTorch; ORT's relative error) per result."""
    for r in results:
        med = r['median_s']
        yield (r['model'], f"{r['batch']}x{r['height']}x{r['width']}",
               [(med[k], r['batch'] / med[k]) for k in ROUTES],
               med['pytorch'] / med['onnxruntime'],
               r['rel_error']['onnxruntime'])


def markdown(results, info, args) -> str:
    lines = [
        f"CPU: {info['cpu']} ({info.get('logical_cpus')} logical CPUs; "
        f"ATen {info.get('aten_cpu_capability')}, oneDNN "
        f"{info.get('onednn_isa')}); torch {info['torch']}, ONNX Runtime "
        f"{results[0]['ort'] if results else '?'}; {args.threads} threads, "
        f'fp32; median of {args.rounds} interleaved rounds x '
        f'{args.repeats} runs.', '',
        '| backbone | input (batch x H x W) | PyTorch | ONNX Runtime | '
        'ORT against PyTorch | ORT rel. error |',
        '|---|---|---|---|---|---|']
    for model, shape, routes, up, err in rows(results):
        cells = ' | '.join(f'{s:.3f} s ({ips:.2f} img/s)'
                           for s, ips in routes)
        lines.append(f'| {model} | {shape} | {cells} | {up:.2f}x | '
                     f'{err:.1e} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    if args.job:
        result = run_job(json.loads(args.job))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    info = speed_harness.machine_info()
    print(f"CPU: {info['cpu']}; torch {info['torch']}", flush=True)
    results = []
    for case in args.cases:
        for model in args.models:
            job = dict(model=model, case=case, threads=args.threads,
                       rounds=args.rounds, repeats=args.repeats,
                       warmup=args.warmup)
            result = run_in_subprocess(job, args.timeout)
            results.append(result)
            (model_name, shape, routes, up, err), = rows([result])
            timings = '  '.join(f'{k} {s:.3f} s ({ips:.2f} img/s)'
                                for k, (s, ips) in zip(ROUTES, routes))
            print(f'{model_name:14} {shape:11} {timings}  ORT speed-up '
                  f'{up:.2f}x  rel. error {err:.1e}',
                  flush=True)
    table = markdown(results, info, args)
    print('\n' + table)
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, args=vars(args), results=results),
                      f, indent=1)
    if args.md:
        os.makedirs(osp.dirname(osp.abspath(args.md)), exist_ok=True)
        with open(args.md, 'w') as f:
            f.write(table)


if __name__ == '__main__':
    main()
