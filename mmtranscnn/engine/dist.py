"""Distributed start-up for machines without an accelerator.

On a CPU-only machine mmengine 0.10.7 fails twice: ``init_dist`` calls
``torch.cuda.set_device``, and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects for CPU modules.
:func:`setup_cpu_distributed` avoids both through mmengine's extension
points, patching nothing: it creates a gloo process group before the Runner
exists (so the Runner skips ``init_dist``) and points ``model_wrapper_cfg``
at :class:`CPUDistributedDataParallel`. GPU runs are left to mmengine.
"""
import copy
import datetime
import logging
import os
import subprocess
from typing import Optional

from mmengine.device import get_device
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from torch import distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
CPU_BACKENDS = ('gloo', 'mpi')  # collectives on CPU tensors
# Each launcher's environment variables: rank, world size, local rank.
_LAUNCHER_ENV = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK'),
}


# Registered in mmengine's root registry so that every codebase scope (mmdet,
# mmseg, mmpretrain: their MODEL_WRAPPERS are children of it) can build it.
@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that works for CPU processes too: for a
    module on the CPU it drops ``device_ids`` and ``output_device`` (which
    DDP takes only for CUDA modules) and reverts SyncBatchNorm layers
    (accelerators only) to BatchNorm with a warning.

    Args:
        module (nn.Module): The model to wrap.
        **kwargs: Passed to ``MMDistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, **kwargs) -> None:
        param = next(module.parameters(), None)
        if param is None or param.device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
            # torch's or mmcv's SyncBatchNorm
            if any('SyncBatchNorm' in type(m).__name__
                   for m in module.modules()):
                print_log(
                    'SyncBatchNorm runs only on accelerators; on the CPU it '
                    'is replaced by BatchNorm (per-process statistics).',
                    logger='current', level=logging.WARNING)
                module = revert_sync_batchnorm(module)
        super().__init__(module=module, **kwargs)


def check_launcher(launcher: str) -> None:
    """Raise a ValueError unless ``launcher`` is one of :data:`LAUNCHERS`.

    Args:
        launcher (str): The ``launcher`` of a config or command line.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, '
                         f'but got launcher={launcher!r}')


def _env_int(name: str, launcher: str) -> int:
    """Read an integer environment variable that a launcher must set."""
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(
            f'launcher={launcher!r} needs the environment variable {name}, '
            'which is not set. Start the job with the matching launcher '
            '(pytorch: torchrun / tools/dist_train.sh, slurm: srun / '
            'tools/slurm_train.sh, mpi: mpirun).')
    return int(value)


def init_cpu_dist(launcher: str, backend: str = 'gloo',
                  timeout: Optional[float] = None,
                  port: Optional[int] = None, **kwargs) -> None:
    """Create the default process group without touching CUDA. Rank, world
    size and local rank come from the launcher's environment and are
    exported as ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, as mmengine's
    ``init_dist`` leaves them.

    Args:
        launcher (str): 'pytorch', 'slurm' or 'mpi'.
        backend (str): 'gloo' or 'mpi' (backends with CPU collectives).
        timeout (float, optional): Collective timeout in seconds
            (``env_cfg.dist_cfg.timeout``); None: torch's default.
        port (int, optional): Master port for slurm (as in mmengine);
            otherwise ``MASTER_PORT`` or 29500.
        **kwargs: Passed to ``torch.distributed.init_process_group``.
    """
    check_launcher(launcher)
    if launcher == 'none':
        raise ValueError("init_cpu_dist needs a distributed launcher, "
                         "got launcher='none'")
    if backend not in CPU_BACKENDS:
        raise ValueError(f'backend must be one of {CPU_BACKENDS} for CPU '
                         f'processes, but got backend={backend!r}')
    rank_var, size_var, local_var = _LAUNCHER_ENV[launcher]
    rank = _env_int(rank_var, launcher)
    world_size = _env_int(size_var, launcher)
    local_rank = int(os.environ.get(local_var, 0))
    if launcher == 'slurm':
        if port is not None:
            os.environ['MASTER_PORT'] = str(port)
        if 'MASTER_ADDR' not in os.environ:
            # the first host of the node list (node[1-4] -> node1)
            node_list = os.environ.get('SLURM_NODELIST', '127.0.0.1')
            hosts = subprocess.getoutput(
                f'scontrol show hostname {node_list}')
            os.environ['MASTER_ADDR'] = (hosts.splitlines()[0].strip()
                                         if hosts.strip() else node_list)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        raise RuntimeError(
            f'launcher={launcher!r} needs the environment variable '
            'MASTER_ADDR (the address of the rank-0 host), which is not set.')
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(local_rank))
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(backend=backend, init_method='env://',
                                  rank=rank, world_size=world_size, **kwargs)


def cpu_model_wrapper_cfg(cfg) -> dict:
    """The ``model_wrapper_cfg`` for CPU processes: none or
    ``MMDistributedDataParallel`` becomes :class:`CPUDistributedDataParallel`
    with the same arguments (the Runner's defaults when none); another DDP
    subclass gets ``device_ids=None`` (which wins over the Runner's
    ``[rank]``); anything else is kept.

    Args:
        cfg (Config): The full config.
    """
    wrapper_cfg = cfg.get('model_wrapper_cfg')
    if wrapper_cfg is None:
        return dict(
            type=CPUDistributedDataParallel.__name__,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg = copy.deepcopy(dict(wrapper_cfg))
    wrapper_type = wrapper_cfg.get('type', 'MMDistributedDataParallel')
    if wrapper_type is MMDistributedDataParallel or (
            isinstance(wrapper_type, str) and wrapper_type.split('.')[-1]
            == 'MMDistributedDataParallel'):
        wrapper_cfg['type'] = CPUDistributedDataParallel.__name__
        return wrapper_cfg
    wrapper_cls = (MODEL_WRAPPERS.get(wrapper_type)
                   if isinstance(wrapper_type, str) else wrapper_type)
    if (isinstance(wrapper_cls, type)
            and issubclass(wrapper_cls, DistributedDataParallel)
            and not issubclass(wrapper_cls, CPUDistributedDataParallel)):
        wrapper_cfg['device_ids'] = None
    return wrapper_cfg


def setup_cpu_distributed(cfg) -> bool:
    """Prepare ``cfg`` (and the process group) for CPU distributed runs,
    after :func:`~.scope.setup_codebase` and before building the Runner:
    ``env_cfg.dist_cfg.backend`` becomes gloo unless it is a CPU backend,
    the process group is created (unless one exists) and
    ``cfg.model_wrapper_cfg`` is set (:func:`cpu_model_wrapper_cfg`).
    Returns False, doing nothing, when ``cfg.launcher`` is 'none' or an
    accelerator is present; else True.

    Args:
        cfg (Config): The full config; changed in place.
    """
    launcher = cfg.get('launcher', 'none')
    check_launcher(launcher)
    if launcher == 'none' or get_device() != 'cpu':
        return False
    env_cfg = cfg.get('env_cfg') or {}
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'nccl')
    if backend not in CPU_BACKENDS:
        print_log(
            f'No accelerator found: using the gloo backend instead of '
            f'{backend!r} for distributed training on the CPU.',
            logger='current')
        backend = 'gloo'
    # 'init_backend' selects deepspeed/colossalai in mmengine; the CPU path
    # uses plain torch.distributed.
    dist_cfg.pop('init_backend', None)
    if not is_distributed():
        init_cpu_dist(launcher, backend=backend, **dist_cfg)
    cfg.env_cfg = dict(env_cfg, dist_cfg=dict(dist_cfg, backend=backend))
    cfg.model_wrapper_cfg = cpu_model_wrapper_cfg(cfg)
    return True


def teardown_distributed() -> None:
    """Destroy the default process group if one exists (clean exit)."""
    if is_distributed():
        torch_dist.destroy_process_group()
