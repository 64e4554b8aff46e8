"""One-command check of mmtranscnn on a CUDA machine; all figures to one file.

    python tools/gpu_check.py [OUT.md] [--dry-run] [--steps ...] [options]

Steps (``--steps`` picks some; ``--dry-run`` lists them with their commands
and runs nothing):

1. ``env``: torch, CUDA, the GPU, mmcv and its compiled CUDA ops
   (``mmcv.ops.nms`` on the GPU), the OpenMMLab versions.
2. ``tests``: ``pytest tests/test_cuda.py tests/test_no_sync.py``: fp32
   CUDA against the CPU (backbone, RetinaNet, Mask R-CNN; forward and
   backward), fp16/bf16 autocast, no host-device sync in the backbone's
   forward, fused SDPA, ``with_cp``, the conv chains that recompute norms
   and activations in backward against the modules run one by one,
   SyncBN. Their counts and every
   failure go into the report; a CUDA test that is skipped on a machine
   with a GPU counts as a failure of the step.
3. ``train``: RetinaNet + TransCNN-Small with ``tools/train.py --amp``
   (fp16 autocast, dynamic loss scaling) on generated shapes data
   (``tools/data/make_shapes_coco.py``, the main job's 400 / 80 images at
   160x160, ``configs/tiny/retinanet_transcnn_small_shapes.py``), with the
   COCO evaluation at the end: loss of the first and last iterations, bbox
   mAP / mAP@0.5, time, the optimizer wrapper used.
4. ``benchmark``: ``tools/analysis_tools/benchmark.py --device cuda
   --dtypes fp32 fp16 bf16`` for TransCNN-Base, Swin-T, PVT-Small and
   ResNet-50: backbone inference and train step at 224x224 and 800x1344
   (img/s, peak memory). Batch sizes are those of the
   benchmark's cases; where benchmark.py offers ``--batch CASE=N``, this
   script asks for 64 at 224x224 and 2 at 800x1344.

The report (markdown; default ``work_dirs/gpu_check/gpu_check.md``) holds
every step's status, command, figures and the tail of its output on
failure; the exit status is non-zero when a step failed. Each step can run
alone (``--steps benchmark``), e.g. to fit a limit on one command's time;
``--append`` then adds its sections to the report of the earlier steps.

Bringing the stack to a machine with its own torch and none of the
OpenMMLab packages (e.g. no network there, or a torch you must not replace)
-------------------------------------------------------------------------
On a machine with PyPI access, with the same Python version::

    mkdir wheels
    pip download -d wheels mmengine==0.10.7 mmdet==3.3.0 mmpretrain==1.2.0 \\
        mmsegmentation==1.2.2 ftfy regex pycocotools matplotlib \\
        pytest pytest-timeout --no-deps   # then their dependencies:
    pip download -d wheels addict yapf termcolor rich opencv-python \\
        shapely scipy terminaltables tqdm einops importlib-metadata \\
        mat4py modelindex prettytable
    pip download -d wheels --no-deps --no-binary :all: mmcv==2.1.0

mmcv 2.x has no CUDA wheels on PyPI; build it on the GPU machine, against
its torch (8-15 min)::

    tar xzf wheels/mmcv-2.1.0.tar.gz
    # torch >= 2.14 headers need C++20; mmcv 2.1.0 asks for C++17:
    sed -i 's/-std=c++17/-std=c++20/g' mmcv-2.1.0/setup.py
    (cd mmcv-2.1.0 && MMCV_WITH_OPS=1 FORCE_CUDA=1 \\
        pip wheel --no-build-isolation --no-deps -w ../wheels .)

(``--build-mmcv SDIST --wheels DIR`` does these three commands.) Then
install without touching torch: ``--wheels DIR`` runs, before the steps::

    pip install --no-index --find-links DIR -c <torch==installed version> \\
        mmcv==2.1.0 mmengine==0.10.7 mmdet==3.3.0 mmpretrain==1.2.0 \\
        mmsegmentation==1.2.2 ftfy regex pycocotools matplotlib pytest \\
        pytest-timeout

and the repository is used from its folder (``PYTHONPATH``), not
installed. torchvision must already be there and match the torch (mmpretrain
imports it). Supported torch versions: see setup.py.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STEPS = ('env', 'tests', 'train', 'benchmark')
BENCH_MODELS = ['TransCNN-Base', 'Swin-T', 'PVT-Small', 'ResNet-50']
BENCH_CASES = ['backbone-224', 'backbone-det', 'backbone-train-224',
               'backbone-train']
BENCH_DTYPES = ['fp32', 'fp16', 'bf16']
#: Batch sizes wanted per case, passed where benchmark.py takes them.
BENCH_BATCH = {'backbone-224': 64, 'backbone-det': 2, 'backbone-train-224': 64,
               'backbone-train': 2,
               'retinanet-infer': 2, 'retinanet-train': 2}
TRAIN_CONFIG = osp.join(ROOT, 'configs', 'tiny',
                        'retinanet_transcnn_small_shapes.py')
#: The main job's data (tools/main_job.py).
DATA_SETTINGS = dict(num_train=400, num_val=80, img_size=(160, 160), seed=0)
STACK = ['mmcv==2.1.0', 'mmengine==0.10.7', 'mmdet==3.3.0',
         'mmpretrain==1.2.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex',
         'pycocotools', 'matplotlib', 'pytest', 'pytest-timeout']

ENV_PROBE = r"""
import json, platform, torch
info = dict(python=platform.python_version(), torch=torch.__version__,
            cuda_build=torch.version.cuda,
            cuda_available=torch.cuda.is_available())
if info['cuda_available']:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_count=torch.cuda.device_count(),
                gpu_mem_gb=round(p.total_memory / 2**30, 1),
                capability='.'.join(map(str, torch.cuda.get_device_capability())),
                bf16=torch.cuda.is_bf16_supported(),
                cudnn=torch.backends.cudnn.version())
from importlib import metadata
for name in ('torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmpretrain',
             'mmsegmentation'):
    try:
        info[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        info[name] = 'missing'
try:
    from mmcv.ops import nms
    dev = 'cuda' if info['cuda_available'] else 'cpu'
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]], device=dev)
    keep = nms(boxes, torch.tensor([.9, .8], device=dev), .5)[1]
    info['mmcv_ops'] = f'nms ran on {dev}, kept {keep.tolist()}'
except Exception as e:
    info['mmcv_ops'] = f'failed ({type(e).__name__}: {e})'
print('ENV ' + json.dumps(info))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Run the CUDA tests, a short AMP training and the CUDA '
        'benchmark; write every figure to one markdown file.')
    parser.add_argument('out', nargs='?',
                        default=osp.join(ROOT, 'work_dirs', 'gpu_check',
                                         'gpu_check.md'),
                        help='report file (default: %(default)s)')
    parser.add_argument('--steps', nargs='+', default=list(STEPS),
                        help=f'steps to run, any of {list(STEPS)} '
                        '(default: all)')
    parser.add_argument('--append', action='store_true',
                        help='add to an existing report instead of '
                        'replacing it')
    parser.add_argument('--dry-run', action='store_true',
                        help='list the steps and their commands, run nothing')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter for every step (default: this one)')
    parser.add_argument('--work-dir', default=None,
                        help='training and benchmark outputs (default: the '
                        "report's folder)")
    parser.add_argument('--train-epochs', type=int, default=10,
                        help='epochs of the AMP training (default: 10, the '
                        "main job's schedule)")
    parser.add_argument('--bench-cases', nargs='+', default=BENCH_CASES,
                        help='benchmark cases (default: %(default)s)')
    parser.add_argument('--bench-models', nargs='+', default=BENCH_MODELS,
                        help='benchmark models (default: %(default)s)')
    parser.add_argument('--bench-dtypes', nargs='+', default=BENCH_DTYPES,
                        help='benchmark precisions (default: %(default)s)')
    parser.add_argument('--bench-repeats', type=int, default=10,
                        help='timed steps per benchmark model (default: 10)')
    parser.add_argument('--wheels', default=None,
                        help='install the OpenMMLab stack from this folder of '
                        'wheels first, keeping the installed torch')
    parser.add_argument('--build-mmcv', default=None, metavar='SDIST',
                        help='build an mmcv wheel with CUDA ops from this '
                        'sdist into --wheels first')
    parser.add_argument('--env-probe', action='store_true',
                        help=argparse.SUPPRESS)  # step 1, in a subprocess
    parser.add_argument('--timeout', type=float, default=3600,
                        help='seconds per step (default: 3600)')
    args = parser.parse_args(argv)
    bad = [s for s in args.steps if s not in STEPS]
    if bad:
        parser.error(f'--steps: unknown {bad}; allowed: {list(STEPS)}')
    bad = [d for d in args.bench_dtypes if d not in BENCH_DTYPES]
    if bad:
        parser.error(f'--bench-dtypes: unknown {bad}; allowed: '
                     f'{BENCH_DTYPES}')
    bad = [c for c in args.bench_cases if c not in BENCH_BATCH]
    if bad:
        parser.error(f'--bench-cases: unknown {bad}; allowed: '
                     f'{sorted(BENCH_BATCH)}')
    for name in ('train_epochs', 'bench_repeats'):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got "
                         f'{getattr(args, name)}')
    if args.build_mmcv and not args.wheels:
        parser.error('--build-mmcv needs --wheels DIR (where the wheel goes)')
    args.out = osp.abspath(args.out)
    args.work_dir = osp.abspath(args.work_dir or osp.dirname(args.out))
    return args


# -- the commands of each step --------------------------------------------------
def bench_supports_batch(python: str) -> bool:
    """Whether benchmark.py takes ``--batch CASE=N``."""
    try:
        out = subprocess.run(
            [python, osp.join(ROOT, 'tools', 'analysis_tools',
                              'benchmark.py'), '--help'],
            capture_output=True, text=True, timeout=300, env=step_env()).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return '--batch' in out


def step_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                  if p])
    env.setdefault('PYTHONWARNINGS', 'ignore')
    return env


def plan(args, probe_batch=True):
    """[(step, description, [commands])]; each command an argv list."""
    py = args.python
    steps = []
    if args.build_mmcv:
        src = osp.join(args.work_dir, 'mmcv-src')
        steps.append(('build-mmcv', 'build mmcv 2.1.0 with CUDA ops', [
            ['mkdir', '-p', src],
            ['tar', 'xzf', args.build_mmcv, '-C', src,
             '--strip-components=1'],
            ['sed', '-i', 's/-std=c++17/-std=c++20/g',
             osp.join(src, 'setup.py')],
            ['env', 'MMCV_WITH_OPS=1', 'FORCE_CUDA=1', py, '-m', 'pip',
             'wheel', '--no-build-isolation', '--no-deps', '-w',
             osp.abspath(args.wheels), src],
        ]))
    if args.wheels:
        constraint = osp.join(args.work_dir, 'keep-torch.txt')
        steps.append(('install', 'install the OpenMMLab stack from wheels, '
                      'keeping torch', [
                          [py, '-c', 'import torch; print("torch==" + '
                           'torch.__version__)', '>', constraint],
                          [py, '-m', 'pip', 'install', '--no-index',
                           '--find-links', osp.abspath(args.wheels), '-c',
                           constraint] + STACK,
                      ]))
    if 'env' in args.steps:
        steps.append(('env', 'torch, CUDA, GPU, mmcv CUDA ops',
                      [[py, osp.abspath(__file__), '--env-probe']]))
    if 'tests' in args.steps:
        steps.append(('tests', 'CUDA tests against the CPU', [[
            py, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
            '-o', 'addopts=', osp.join(ROOT, 'tests', 'test_cuda.py'),
            osp.join(ROOT, 'tests', 'test_no_sync.py')
        ]]))
    if 'train' in args.steps:
        train_dir = osp.join(args.work_dir, 'train')
        data = osp.join(train_dir, 'data', 'shapes')
        make = (f'import sys; sys.path.insert(0, {osp.join(ROOT, "tools", "data")!r}); '
                'from make_shapes_coco import make_shapes_coco; '
                f'print(make_shapes_coco({data!r}, **{DATA_SETTINGS!r}))')
        ann = osp.join(data, 'annotations', 'instances_val.json')
        epochs = args.train_epochs
        steps.append(('train', 'RetinaNet AMP training on shapes, with '
                      'evaluation', [
                          [py, '-c', make],
                          [py, osp.join(ROOT, 'tools', 'train.py'),
                           TRAIN_CONFIG, '--amp', '--work-dir',
                           osp.join(train_dir, 'work'), '--cfg-options',
                           f'train_dataloader.dataset.data_root={data}/',
                           f'val_dataloader.dataset.data_root={data}/',
                           f'test_dataloader.dataset.data_root={data}/',
                           f'val_evaluator.ann_file={ann}',
                           f'test_evaluator.ann_file={ann}',
                           f'train_cfg.max_epochs={epochs}',
                           f'train_cfg.val_interval={epochs}',
                           f'param_scheduler.1.end={epochs}',
                           f'default_hooks.checkpoint.interval={epochs}'],
                      ]))
    if 'benchmark' in args.steps:
        cmd = [py, osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark.py'),
               '--device', 'cuda', '--dtypes', *args.bench_dtypes,
               '--models', *args.bench_models, '--cases', *args.bench_cases,
               '--repeats', str(args.bench_repeats), '--warmup', '3',
               '--json', osp.join(args.work_dir, 'benchmark.json'),
               '--md', osp.join(args.work_dir, 'benchmark.md')]
        if probe_batch and bench_supports_batch(py):
            cmd += ['--batch'] + [f'{c}={BENCH_BATCH[c]}'
                                  for c in args.bench_cases]
        steps.append(('benchmark', 'CUDA benchmark, fp32 / fp16 / bf16',
                      [cmd]))
    return steps


def show(cmd):
    if '>' in cmd:
        i = cmd.index('>')
        return shlex.join(cmd[:i]) + ' > ' + shlex.join(cmd[i + 1:])
    return shlex.join(cmd)


# -- running and reading the results ---------------------------------------------
def run_command(cmd, cwd, timeout):
    redirect = None
    if '>' in cmd:
        i = cmd.index('>')
        cmd, redirect = cmd[:i], cmd[i + 1]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=step_env(), text=True,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        code = 'timeout'
        out = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) \
            else (e.stdout or '')
    if redirect and code == 0:
        with open(redirect, 'w') as f:
            f.write(out)
    sys.stdout.write(out)
    sys.stdout.flush()
    return code, out, time.time() - start


def read_env(out):
    for line in out.splitlines():
        if line.startswith('ENV '):
            return json.loads(line[4:])
    return {}


def summarise_tests(out, env):
    """Counts of the pytest run, and whether the step passed."""
    counts = {k: int(v) for v, k in re.findall(
        r'(\d+) (passed|failed|skipped|errors?|deselected)', out)}
    skipped_cuda = [l for l in out.splitlines()
                    if l.startswith('SKIPPED') and 'no CUDA device' in l]
    lines = ['- counts: ' + ', '.join(f'{v} {k}' for k, v in counts.items())]
    ok = counts.get('failed', 0) == 0 and not counts.get('error') \
        and not counts.get('errors') and counts.get('passed', 0) > 0
    if env.get('cuda_available') and skipped_cuda:
        ok = False
        lines.append('- CUDA tests skipped although a GPU is present:')
        lines += [f'  - {l}' for l in skipped_cuda]
    lines += [f'- {l}' for l in out.splitlines()
              if l.startswith(('FAILED', 'ERROR', 'SKIPPED'))]
    return ok, lines


def summarise_training(work_dir):
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                     'scalars.json')), key=osp.getmtime)
    if not logs:
        return False, ['- no scalars.json: training did not log']
    with open(logs[-1]) as f:
        records = [json.loads(l) for l in f if l.strip()]
    losses = [r['loss'] for r in records if 'loss' in r]
    metrics = [r for r in records if 'coco/bbox_mAP' in r]
    lines = []
    ok = bool(losses) and bool(metrics)
    if losses:
        k = max(1, min(5, len(losses) // 4))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        finite = all(v == v and abs(v) != float('inf') for v in losses)
        ok = ok and finite and last < first
        lines.append(f'- logged losses: {len(losses)}, all finite: {finite}; '
                     f'mean of the first {k}: {first:.4f}, of the last {k}: '
                     f'{last:.4f}')
        mems = [r['memory'] for r in records if 'memory' in r]
        times = [r['time'] for r in records if 'time' in r]
        if mems:
            lines.append(f'- peak memory (logged, MB): {max(mems)}')
        if times:
            lines.append(f'- time per iteration (logged, s): median '
                         f'{sorted(times)[len(times) // 2]:.3f}')
    if metrics:
        m = metrics[-1]
        lines.append('- val ' + ', '.join(
            f'{k[5:]} {m[k]:.3f}' for k in (
                'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')
            if k in m))
    dumped = glob.glob(osp.join(work_dir, '*.py'))
    if dumped:
        text = open(dumped[0]).read()
        wrapper = re.search(r"type='(\w*AmpOptimWrapper)'", text)
        lines.append(f'- optimizer wrapper: '
                     f'{wrapper.group(1) if wrapper else "not AMP"}')
        ok = ok and wrapper is not None
    return ok, lines


def main(argv=None):
    args = parse_args(argv)
    if args.env_probe:
        exec(ENV_PROBE, {})
        return 0
    steps = plan(args, probe_batch=not args.dry_run)
    if args.dry_run:
        print(f'report: {args.out}')
        print(f'work dir: {args.work_dir}')
        for i, (name, what, cmds) in enumerate(steps, 1):
            print(f'{i}. {name}: {what}')
            for cmd in cmds:
                print(f'   $ {show(cmd)}')
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    title = f'mmtranscnn GPU check, {time.strftime("%Y-%m-%d %H:%M:%S")}'
    previous = ''
    if args.append and osp.isfile(args.out):
        with open(args.out) as f:
            previous = f.read().rstrip('\n') + '\n\n'
    report = [('## ' if previous else '# ') + title, '']
    env, failed = {}, []
    for name, what, cmds in steps:
        report += [f'### {name}: {what}', '']
        status, out, took, code = 'ok', '', 0., 0
        for cmd in cmds:
            report.append(f'    $ {show(cmd)}')
            code, out, t = run_command(cmd, ROOT, args.timeout)
            took += t
            if code != 0:
                status = f'FAILED (exit {code})'
                break
        report.append('')
        lines = []
        if name == 'env':
            env = read_env(out)
            lines = [f'- {k}: {v}' for k, v in env.items()]
            if not env.get('cuda_available'):
                status = 'FAILED (no CUDA device)'
            elif not str(env.get('mmcv_ops', '')).startswith('nms ran on '
                                                             'cuda'):
                status = 'FAILED (mmcv CUDA ops)'
        elif name == 'tests':
            ok, lines = summarise_tests(out, env)
            if not ok:
                status = 'FAILED'
        elif name == 'train' and status == 'ok':
            ok, lines = summarise_training(osp.join(args.work_dir, 'train',
                                                    'work'))
            if not ok:
                status = 'FAILED (see figures)'
        elif name == 'benchmark':
            md = osp.join(args.work_dir, 'benchmark.md')
            if osp.isfile(md) and status == 'ok':
                lines = [open(md).read()]
        report += [f'**{status}** in {took:.0f} s', ''] + lines + ['']
        if status != 'ok':
            failed.append(name)
            report += ['Output (last 60 lines):', '', '```'] + \
                out.splitlines()[-60:] + ['```', '']
        with open(args.out, 'w') as f:  # after every step: partial results
            f.write(previous + '\n'.join(report) + '\n')
    result = ('all steps passed' if not failed else
              'FAILED: ' + ', '.join(failed))
    report.insert(2, f'Result: {result}\n')
    with open(args.out, 'w') as f:
        f.write(previous + '\n'.join(report) + '\n')
    print(f'\nreport: {args.out}' + (f' (failed: {failed})' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
