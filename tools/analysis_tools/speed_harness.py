"""Throughput and peak memory of backbones and detectors, one model per process.

The measuring harness of the benchmark tools in this folder (not part of
the ``mmtranscnn`` package): ``benchmark.py``, ``plot_scaling.py``,
``profile_model.py`` and ``scale_benchmark.py`` import it as
``speed_harness`` (Python puts a script's own folder first on its path).
They describe each measurement as a :class:`Job` and run it in a fresh
interpreter (``python speed_harness.py JOB_JSON``), so that one model's
allocations never sit in another's memory reading.

Inside that process the order is fixed, because a process-wide peak can
only go up:

1. build the model and the input; for inference run one step for the
   one-time work (kernel creation, TransCNN's per-shape choice of fast
   paths); release the allocator's free memory (``malloc_trim``), read the
   resident set size (RSS);
2. reset the kernel's high-water mark (``/proc/self/clear_refs``), run ONE
   step and read the high-water mark again: **peak memory is its growth over
   the RSS before the step** (weights and input excluded; for a train step
   gradients and optimiser state included). On CUDA it is
   ``max_memory_allocated`` over the allocation before the step;
3. only then warm up further and time ``repeats`` steps;
4. last, anything that allocates for itself (FLOP counting traces the model).

Comparisons mean something only between rows of one run on one machine:
every job of a run uses the same input, thread count and repeat policy.
"""
import argparse
import contextlib
import functools
import json
import os
import os.path as osp
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

# -- what can be measured -------------------------------------------------

#: Backbones by display name: (module path, class name, constructor kwargs).
#: The baselines are the OpenMMLab implementations (mmdet's, and
#: mmpretrain's ConvNeXt, which mmdet's ConvNeXt configs use) with the
#: settings of the detection configs for them; only the TransCNN grids vary
#: per input.
BACKBONES: Dict[str, Tuple[str, str, dict]] = {
    # norm_eval as in our RetinaNet configs (and mmdet's ResNet default):
    # BN keeps its statistics when a train step is measured.
    'TransCNN-Base': ('mmtranscnn.models', 'TransCNN',
                      dict(arch='base', norm_eval=True)),
    'ResNet-50': ('mmdet.models.backbones', 'ResNet', dict(depth=50)),
    'Swin-T': ('mmdet.models.backbones', 'SwinTransformer',
               dict(embed_dims=96, depths=(2, 2, 6, 2),
                    num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4,
                    qkv_bias=True)),
    'PVT-Small': ('mmdet.models.backbones', 'PyramidVisionTransformer',
                  dict(num_layers=[3, 4, 6, 3])),
    'PVTv2-B2': ('mmdet.models.backbones', 'PyramidVisionTransformerV2',
                 dict(embed_dims=64, num_layers=[3, 4, 6, 3])),
    # mmpretrain's ConvNeXt as mmdet's ConvNeXt-T detection configs build
    # it: the four stage maps, each through its own LayerNorm (no global
    # pooling), layer scale starting at 1. Stochastic depth off, as for
    # TransCNN-Base: it does nothing in eval mode, and a backbone train step
    # measures the network itself (the RetinaNet configs set their own).
    'ConvNeXt-T': ('mmpretrain.models', 'ConvNeXt',
                   dict(arch='tiny', out_indices=(0, 1, 2, 3),
                        gap_before_final_norm=False, drop_path_rate=0.,
                        layer_scale_init_value=1.0)),
    # The authors' released networks (ImageNet weights exist for these):
    # their own level-0 windows; the case's grid sizes set the pooling
    # ratios, (8, 4, 2, 0) at 224 and (16, 8, 4, 0) at detection size, as
    # in configs/released/.
    'TransCNN-v1-Small': ('mmtranscnn.models', 'TransCNN',
                          dict(arch='transcnn-v1-small', norm_eval=True)),
    'HAT-Net-Small': ('mmtranscnn.models', 'TransCNN',
                      dict(arch='hatnet-small', norm_eval=True)),
    # TransCNN-Base recomputing each block in backward (with_cp=True): the
    # setting for the least training memory.
    'TransCNN-Base-cp': ('mmtranscnn.models', 'TransCNN',
                         dict(arch='base', norm_eval=True, with_cp=True)),
    # TransCNN-Base with plain (global) attention in every stage: the
    # quadratic cost that H-MHSA exists to avoid.
    'Plain-Attention': ('mmtranscnn.models', 'TransCNN',
                        dict(arch='base', grid_sizes=(0, 0, 0, 0))),
}

#: RetinaNet configs by backbone display name (``pkg::`` = that package's
#: shipped configs; a bare path is relative to our configs folder).
DETECTORS: Dict[str, str] = {
    'TransCNN-Base': 'paper_arch/retinanet_transcnn-paper-base_fpn_1x_coco.py',
    'TransCNN-v1-Small': 'retinanet_transcnn_base.py',
    'HAT-Net-Small': 'released/detection/retinanet_hatnet-small_fpn_1x_coco.py',
    'ResNet-50': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'Swin-T': 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py',
    'PVT-Small': 'mmdet::pvt/retinanet_pvt-s_fpn_1x_coco.py',
    'PVTv2-B2': 'mmdet::pvt/retinanet_pvtv2-b2_fpn_1x_coco.py',
    # mmdet ships no RetinaNet with ConvNeXt; ours follows its ConvNeXt
    # configs (mmpretrain's backbone, FPN on [96, 192, 384, 768]).
    'ConvNeXt-T': 'peers/retinanet_convnext-t_fpn_1x_coco.py',
}

#: The benchmark's cases: name -> (kind, mode, batch, height, width,
#: TransCNN grid sizes).
CASES = {
    'backbone-224': ('backbone', 'infer', 8, 224, 224, [8, 4, 2, 0]),
    'backbone-det': ('backbone', 'infer', 1, 800, 1344, [16, 8, 4, 0]),
    'backbone-train-224': ('backbone', 'train', 8, 224, 224, [8, 4, 2, 0]),
    'backbone-train': ('backbone', 'train', 1, 800, 1344, [16, 8, 4, 0]),
    'retinanet-infer': ('detector', 'infer', 1, 800, 1344, [16, 8, 4, 0]),
    'retinanet-train': ('detector', 'train', 1, 800, 1344, [16, 8, 4, 0]),
}

KINDS = ('backbone', 'detector')
MODES = ('infer', 'train')
DEVICES = ('cpu', 'cuda')
DTYPES = ('fp32', 'fp16', 'bf16')


@dataclass
class Job:
    """One measurement, run in its own process.

    Args:
        model: a key of :data:`BACKBONES` (kind 'backbone') or
            :data:`DETECTORS` (kind 'detector').
        kind: 'backbone' or 'detector'.
        mode: 'infer' (eval mode, ``torch.inference_mode``) or 'train' (one
            forward + backward + AdamW step; for a backbone the loss is the
            sum of the mean of each output map).
        batch, height, width: input shape (3 channels).
        grid_sizes: TransCNN grid sizes per stage (None: the model's own);
            ignored for other backbones.
        device: 'cpu' or 'cuda'.
        dtype: 'fp32', or 'fp16'/'bf16' through ``torch.autocast``.
        threads: CPU threads (``torch.set_num_threads`` and the OpenMP/MKL
            environment of the process).
        warmup: untimed steps after the memory step.
        repeats: timed steps.
        channels_last: convert every model and the input to channels-last
            (off by default: each model runs as its authors ship it).
        flops: count FLOPs (backbones only, after timing).
        keep_freed_memory: in CPU train steps, let glibc keep freed memory
            for reuse (:mod:`mmtranscnn.engine.cpu_memory`), as
            ``tools/train.py`` does, the same for every model; False
            measures with the system's malloc settings. Inference is always
            measured with the system's settings, as ``tools/test.py`` runs.
    """
    model: str
    kind: str = 'backbone'
    mode: str = 'infer'
    batch: int = 1
    height: int = 224
    width: int = 224
    grid_sizes: Optional[list] = None
    device: str = 'cpu'
    dtype: str = 'fp32'
    threads: int = 2
    warmup: int = 2
    repeats: int = 5
    channels_last: bool = False
    flops: bool = False
    keep_freed_memory: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> 'Job':
        for name, value, allowed in (
                ('kind', self.kind, KINDS), ('mode', self.mode, MODES),
                ('device', self.device, DEVICES),
                ('dtype', self.dtype, DTYPES)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got '
                                 f'{value!r}')
        table = BACKBONES if self.kind == 'backbone' else DETECTORS
        if self.model not in table:
            raise ValueError(f'model must be one of {sorted(table)} for '
                             f'kind={self.kind!r}, got {self.model!r}')
        for name in ('batch', 'height', 'width', 'threads', 'repeats'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got '
                                 f'{getattr(self, name)}')
        return self


# -- memory readings --------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def hwm_bytes() -> int:
    """Peak resident set size (VmHWM) of this process."""
    with open('/proc/self/status') as f:
        match = re.search(r'VmHWM:\s+(\d+) kB', f.read())
    if match is None:  # pragma: no cover - non-Linux
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return int(match.group(1)) * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def add_system_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """``--system-malloc``, the tools' switch for
    :attr:`Job.keep_freed_memory`.

    Args:
        parser: the tool's argument parser.
    """
    parser.add_argument('--system-malloc', action='store_true',
                        help='CPU train steps: leave glibc malloc as the '
                        'system sets it (default: freed memory is kept '
                        'for reuse, for every model, as tools/train.py '
                        'does; inference always runs with the system\'s '
                        'settings)')


def keep_freed_memory_for(job: 'Job') -> Optional[bool]:
    """Keep freed memory for reuse where ``job`` asks for it (CPU train
    steps, as ``tools/train.py`` runs them).

    Returns:
        None where the job does not ask, else whether it is in force.
    """
    if not (job.device == 'cpu' and job.mode == 'train'
            and job.keep_freed_memory):
        return None
    from mmtranscnn.engine.cpu_memory import keep_freed_memory
    return keep_freed_memory() is None  # None once applied


def measure_peak_memory(step: Callable[[], None],
                        device_type: str) -> Tuple[float, float, bool]:
    """Run ``step`` once and return how much memory it needed on top of
    what was live before it (steps 1-2 of the module docstring).

    Args:
        step: one inference or train step.
        device_type: 'cpu' (RSS high-water mark) or 'cuda'
            (``max_memory_allocated``).

    Returns:
        ``(peak bytes, RSS before the step in bytes, whether the kernel
        reset the high-water mark)``.
    """
    import torch

    from mmtranscnn.engine.cpu_memory import trim_freed_memory
    cuda = device_type == 'cuda'
    trim_freed_memory()  # the RSS before the step holds live data only
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = rss_bytes()
    hwm_was_reset = reset_hwm()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = hwm_bytes() - rss_before
    return peak, rss_before, hwm_was_reset


class SavedForBackward:
    """Counts the bytes of the distinct tensor storages autograd saves for
    backward while it is entered (a saved-tensors hook that keeps each
    tensor as it is). Entered around a forward pass: what that pass keeps
    until backward, not what backward itself holds for a moment."""

    def __init__(self):
        self._storages = {}
        self._hooks = None

    @property
    def nbytes(self) -> int:
        return sum(self._storages.values())

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        import torch
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


# -- building ---------------------------------------------------------------
def resolve_config(path: str) -> str:
    """``pkg::rel`` -> that package's shipped config; a bare relative path
    -> our configs folder (installed ``.mim/configs`` or the checkout's)."""
    if '::' in path:
        from mmengine.utils import get_installed_path
        pkg, rel = path.split('::', 1)
        root = get_installed_path(pkg)
        for cand in (osp.join(root, '.mim', 'configs', rel),
                     osp.join(root, 'configs', rel)):
            if osp.isfile(cand):
                return cand
        raise FileNotFoundError(f'{path}: no such config in {pkg}')
    if osp.isfile(path):
        return path
    import mmtranscnn
    pkg_dir = osp.dirname(osp.abspath(mmtranscnn.__file__))
    for cand in (osp.join(pkg_dir, '.mim', 'configs', path),
                 osp.join(osp.dirname(pkg_dir), 'configs', path)):
        if osp.isfile(cand):
            return cand
    raise FileNotFoundError(f'config {path!r} not found')


def _is_released(arch) -> bool:
    from mmtranscnn.models.released import RELEASED
    return isinstance(arch, str) and arch in RELEASED


def build_backbone(name: str, grid_sizes=None):
    """A backbone of :data:`BACKBONES` with its default initialisation."""
    import importlib
    module, cls_name, kwargs = BACKBONES[name]
    kwargs = dict(kwargs)
    if cls_name == 'TransCNN' and grid_sizes is not None \
            and 'grid_sizes' not in kwargs:
        grids = tuple(tuple(g) if isinstance(g, list) else g
                      for g in grid_sizes)
        # Released presets keep their windows; the case sets the ratios.
        released = _is_released(kwargs.get('arch'))
        kwargs['pool_ratios' if released else 'grid_sizes'] = grids
    model = getattr(importlib.import_module(module), cls_name)(**kwargs)
    model.init_weights()
    return model


def build_detector(name: str, grid_sizes=None):
    """A RetinaNet of :data:`DETECTORS`, randomly initialised (no
    checkpoint is read: every backbone's ``init_cfg`` is dropped)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(resolve_config(DETECTORS[name]))
    cfg.model.backbone.init_cfg = None
    if grid_sizes is not None and 'TransCNN' in str(
            cfg.model.backbone.type) and not _is_released(
                cfg.model.backbone.get('arch')):
        # (released presets' configs already hold the detection setting)
        cfg.model.backbone.grid_sizes = grid_sizes
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def detection_samples(batch: int, height: int, width: int):
    """Data samples with image metas and a few fixed boxes per image."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch):
        s = DetDataSample(metainfo=dict(
            img_id=i, img_shape=(height, width), ori_shape=(height, width),
            pad_shape=(height, width), batch_input_shape=(height, width),
            scale_factor=(1., 1.)))
        xy = torch.rand(5, 2, generator=gen) * torch.tensor(
            [width * .7, height * .7])
        wh = (torch.rand(5, 2, generator=gen) * .25 + .05) * torch.tensor(
            [width, height])
        gt = InstanceData()
        gt.bboxes = torch.cat([xy, xy + wh], dim=1)
        gt.labels = torch.randint(0, 80, (5, ), generator=gen)
        s.gt_instances = gt
        samples.append(s)
    return samples


# -- running ----------------------------------------------------------------
def _step_fn(job: Job, model, x, samples) -> Callable[[], None]:
    """The callable that one timed step runs."""
    import torch

    device_type = job.device
    amp = (torch.autocast(device_type, dtype=getattr(
        torch, {'fp16': 'float16', 'bf16': 'bfloat16'}[job.dtype]))
           if job.dtype != 'fp32' else None)

    def autocast():
        return amp if amp is not None else contextlib.nullcontext()

    if job.mode == 'infer':
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                if job.kind == 'backbone':
                    model(x)
                else:
                    model.predict(x, samples, rescale=False)
        return step

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    scaler = (torch.amp.GradScaler(device_type) if job.dtype == 'fp16'
              else None)

    def train_step(saved_counter=None):
        # saved_counter: a SavedForBackward that counts the bytes the forward
        # saves for backward (run_job's memory step), or None.
        with autocast(), (saved_counter if saved_counter is not None
                           else contextlib.nullcontext()):
            if job.kind == 'backbone':
                loss = sum(out.float().mean() for out in model(x))
            else:
                loss, _ = model.parse_losses(model.loss(x, samples))
        optim.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
        else:
            loss.backward()
            optim.step()
    return train_step


def build_step(job: Job) -> Tuple[Any, Callable[[], None]]:
    """The model of ``job`` on its device and the callable of one step.

    Args:
        job: what to build (model, kind, mode, input shape, device, dtype).

    Returns:
        ``(model, step)``; calling ``step()`` runs one inference or train
        step on a fixed random input.
    """
    import torch
    device = torch.device(job.device)
    torch.manual_seed(0)
    if job.kind == 'backbone':
        model = build_backbone(job.model, job.grid_sizes)
    else:
        model = build_detector(job.model, job.grid_sizes)
    model.to(device)
    x = torch.randn(job.batch, 3, job.height, job.width, device=device)
    if job.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    samples = (detection_samples(job.batch, job.height, job.width)
               if job.kind == 'detector' else None)
    if samples is not None:
        samples = [s.to(device) for s in samples]
    return model, _step_fn(job, model, x, samples)


def saved_for_backward_mb(job: Job, model) -> float:
    """Bytes that one train-mode forward of the backbone ``model`` on an
    input of ``job``'s shape saves for backward (no backward is run)."""
    import torch
    x = torch.randn(job.batch, 3, job.height, job.width,
                    device=torch.device(job.device))
    model.train()
    saved = SavedForBackward()
    with saved:
        outs = model(x)
    del outs
    model.eval()
    return saved.nbytes / 2**20


def run_job(job: Job) -> dict:
    """Measure ``job`` in this process (see the module docstring)."""
    job.validate()
    import torch
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('device=cuda but torch.cuda.is_available() is '
                           'False')
    # Flush-to-zero for every model: without it, denormal floats (Swin-T's
    # masked softmax makes them) run far slower on x86 CPUs, which says
    # little about the model. Set here, in the process that measures only.
    torch.set_flush_denormal(True)
    memory_kept = keep_freed_memory_for(job)
    model, step = build_step(job)
    from mmtranscnn.analysis import count_params
    params = count_params(model)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    # 0 (inference): one step for one-time work (oneDNN kernel creation,
    # TransCNN's per-shape choice of fast paths), whose transient
    # allocations are not what a model needs per step. A train step's
    # memory reading stays the first step, so that it counts gradients and
    # optimiser state, which the first step creates.
    first_step_s = None
    if job.mode == 'infer':
        t0 = time.perf_counter()
        step()
        sync()
        first_step_s = time.perf_counter() - t0

    # 1-2: the memory step, with the freed memory handed back first. A
    # train step also counts the bytes autograd saves for backward: what a
    # GPU would hold, whatever the CPU allocator does.
    saved = SavedForBackward() if job.mode == 'train' else None
    t0 = time.perf_counter()
    peak, rss_before, hwm_was_reset = measure_peak_memory(
        functools.partial(step, saved) if saved is not None else step,
        device.type)
    first_step_s = first_step_s or time.perf_counter() - t0

    # 3: warm-up and timing.
    for _ in range(job.warmup):
        step()
    sync()
    times = []
    for _ in range(job.repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)

    # 3b (extra 'saved_for_backward', inference jobs of backbones): the
    # bytes one train-mode forward of the same size saves for backward.
    saved_infer = None
    if job.extra.get('saved_for_backward') and job.mode == 'infer' \
            and job.kind == 'backbone':
        saved_infer = saved_for_backward_mb(job, model)

    # 4: FLOPs last (tracing allocates).
    gflops = None
    if job.flops and job.kind == 'backbone':
        from mmtranscnn.analysis import count_flops
        # On a fresh model (the timed one has run in train mode).
        plain = build_backbone(job.model, job.grid_sizes)
        gflops = count_flops(plain, (1, 3, job.height, job.width)) / 1e9
    times_sorted = sorted(times)
    median = times_sorted[len(times) // 2] if len(times) % 2 else sum(
        times_sorted[len(times) // 2 - 1:len(times) // 2 + 1]) / 2
    return dict(
        job=asdict(job), params_m=params / 1e6, gflops=gflops,
        peak_mem_mb=peak / 2**20, rss_before_mb=rss_before / 2**20,
        saved_mb=(saved_infer if saved is None else
                  saved.nbytes / 2**20),
        flush_denormal=True,
        hwm_reset=hwm_was_reset, first_step_s=first_step_s, times_s=times,
        median_s=median, min_s=times_sorted[0], max_s=times_sorted[-1],
        img_per_s=job.batch / median, torch=torch.__version__,
        num_threads=torch.get_num_threads(), freed_memory_kept=memory_kept,
        cpu_capability=aten_cpu_capability())


def run_in_subprocess(job: Job, timeout: Optional[float] = None) -> dict:
    """Run ``job`` in a fresh interpreter; a failure becomes a row with an
    ``error`` instead of an exception, so one broken model does not lose a
    whole run."""
    import subprocess
    job.validate()
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads),
               MKL_NUM_THREADS=str(job.threads))
    load_before = os.getloadavg()
    try:
        out = subprocess.run(
            [sys.executable, osp.abspath(__file__), json.dumps(asdict(job))],
            capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        row = dict(job=asdict(job), error=f'timed out after {timeout} s')
    else:
        lines = [ln for ln in out.stdout.splitlines()
                 if ln.startswith(RESULT_PREFIX)]
        if out.returncode == 0 and lines:
            row = json.loads(lines[-1][len(RESULT_PREFIX):])
        else:
            tail = (out.stderr.strip().splitlines() or ['(no output)'])[-1]
            row = dict(job=asdict(job),
                       error=f'exit {out.returncode}: {tail}')
    row['loadavg_before'] = load_before
    row['loadavg_after'] = os.getloadavg()
    return row


# -- the machine ------------------------------------------------------------
#: CPU flags that decide which kernels oneDNN and ATen can use.
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
             'amx_tile', 'amx_bf16', 'amx_int8')
#: Environment variables that set which kernels run: the caps on ATen's
#: dispatch level, on oneDNN's ISA (``DNNL_MAX_CPU_ISA`` is the older name
#: oneDNN still reads) and on MKL's (the GEMMs behind aten's addmm/mm/bmm:
#: without this cap they keep AVX-512 while ATen and oneDNN run AVX2), and
#: oneDNN's default math mode (which can let it compute fp32 work in bf16).
ISA_ENV = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA',
           'MKL_ENABLE_INSTRUCTIONS', 'ONEDNN_DEFAULT_FPMATH_MODE')
#: Thread settings of the process.
THREAD_ENV = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def _key_values(text: str, sep: str) -> Dict[str, str]:
    """``key<sep>value`` lines of the first block of ``text`` (the first
    processor of /proc/cpuinfo), keys lower-cased."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, found, value = line.partition(sep)
        if found:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def parse_cpu(cpuinfo: Optional[str] = None,
              lscpu: Optional[str] = None) -> dict:
    """The CPU's name, vendor, signature and ISA flags.

    Args:
        cpuinfo: text of /proc/cpuinfo (read when None).
        lscpu: output of ``lscpu``, used for what /proc/cpuinfo lacks (run
            when needed and None).

    Returns:
        ``cpu`` (model name), ``cpu_vendor``, ``cpu_signature`` (x86
        family/model/stepping, which names the core generation where a
        hypervisor hides the model name), ``hypervisor`` and ``isa_flags``
        (each of :data:`ISA_FLAGS` -> present or not).
    """
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ''
    info = _key_values(cpuinfo, ':')
    name = info.get('model name')
    vendor = info.get('vendor_id')
    flags = info.get('flags', info.get('features'))
    if name is None or vendor is None or flags is None:
        if lscpu is None:
            import subprocess
            try:
                lscpu = subprocess.run(
                    ['lscpu'], capture_output=True, text=True,
                    timeout=30, env=dict(os.environ, LC_ALL='C')).stdout
            except (OSError, subprocess.SubprocessError):
                lscpu = ''
        ls = _key_values(lscpu, ':')
        name = name or ls.get('model name')
        vendor = vendor or ls.get('vendor id')
        flags = flags if flags is not None else ls.get('flags')
    flag_set = set((flags or '').split())
    signature = None
    if 'cpu family' in info:
        signature = (f"family {info['cpu family']} model "
                     f"{info.get('model', '?')} stepping "
                     f"{info.get('stepping', '?')}")
    return dict(
        cpu=name or platform.processor() or platform.machine(),
        cpu_vendor=vendor, cpu_signature=signature,
        hypervisor='hypervisor' in flag_set,
        isa_flags={f: f in flag_set for f in ISA_FLAGS})


def aten_cpu_capability() -> Optional[str]:
    """The SIMD level ATen's CPU kernels dispatch to in this process (e.g.
    'AVX512', 'AVX2', 'DEFAULT'; lowered by ``ATEN_CPU_CAPABILITY``)."""
    import torch
    get = getattr(getattr(torch.backends, 'cpu', None),
                  'get_cpu_capability', None)
    return get() if get is not None else None


_ONEDNN_ISA = re.compile(r'onednn_verbose,(?:v\d+,)?info,cpu,isa:(.+)')
_ONEDNN_VERSION = re.compile(r'(?:oneDNN|MKL-DNN) (v[\d.]+)')


def parse_onednn_verbose(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(ISA, version) from oneDNN's verbose output, None where absent."""
    isa = _ONEDNN_ISA.search(text)
    version = _ONEDNN_VERSION.search(text)
    return (isa.group(1).strip() if isa else None,
            version.group(1) if version else None)


#: Runs one convolution big enough for oneDNN, which then prints its info.
_ONEDNN_PROBE = ('import torch\n'
                 'torch.nn.functional.conv2d(torch.randn(1, 64, 56, 56), '
                 'torch.randn(64, 64, 3, 3), padding=1)\n')


def onednn_isa(timeout: float = 120) -> Tuple[Optional[str], Optional[str]]:
    """The instruction set oneDNN's CPU kernels use, and oneDNN's version.

    oneDNN says it only in its verbose output, so one convolution runs in a
    fresh interpreter with ``ONEDNN_VERBOSE=1`` and this process's
    environment (``ONEDNN_MAX_CPU_ISA`` in force as for the measurements).
    (None, None) when torch has no oneDNN or the probe fails.
    """
    import subprocess
    import torch
    if not torch.backends.mkldnn.is_available():
        return None, None
    env = dict(os.environ, ONEDNN_VERBOSE='1', DNNL_VERBOSE='1',
               OMP_NUM_THREADS='1')
    try:
        out = subprocess.run([sys.executable, '-c', _ONEDNN_PROBE],
                             capture_output=True, text=True, env=env,
                             timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return parse_onednn_verbose(out.stdout + out.stderr)


def machine_info(probe_onednn: bool = True) -> dict:
    """What the figures were measured on.

    Args:
        probe_onednn: run :func:`onednn_isa` (a few seconds: one extra
            interpreter) for the ISA oneDNN uses; else ``onednn_isa`` is
            None.

    Returns:
        :func:`parse_cpu`'s fields, plus ``aten_cpu_capability``,
        ``onednn_isa``, ``onednn_version``, ``isa_env`` (each of
        :data:`ISA_ENV` -> its value, None when unset), ``torch``,
        ``torch_threads`` (this process's), ``thread_env``, ``logical_cpus``,
        ``mem_gb``, ``python``, ``date`` and, with CUDA, ``gpu``.
    """
    import torch
    info = parse_cpu()
    mem_gb = None
    try:
        mem_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf(
            'SC_PHYS_PAGES') / 2**30
    except (ValueError, OSError):
        pass
    isa, version = onednn_isa() if probe_onednn else (None, None)
    if version is None:
        version = parse_onednn_verbose(torch.__config__.show())[1]
    info.update(
        aten_cpu_capability=aten_cpu_capability(), onednn_isa=isa,
        onednn_version=version,
        isa_env={k: os.environ.get(k) for k in ISA_ENV},
        torch=torch.__version__, torch_threads=torch.get_num_threads(),
        thread_env={k: os.environ.get(k) for k in THREAD_ENV},
        logical_cpus=os.cpu_count(), mem_gb=mem_gb,
        python=platform.python_version(),
        date=time.strftime('%Y-%m-%d %H:%M %Z'))
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


RESULT_PREFIX = 'SPEED_RESULT '


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Run one benchmark job (JSON) in this process and print '
        'its result; the benchmark tools call this in a subprocess.')
    parser.add_argument('job', help='a Job as JSON')
    args = parser.parse_args(argv)
    job = Job(**json.loads(args.job))
    result = run_job(job)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
