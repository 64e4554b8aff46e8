"""Distributed start-up for machines without an accelerator.

On a GPU machine the tools leave distributed training entirely to mmengine
(NCCL process group, ``MMDistributedDataParallel``). On a CPU-only machine
mmengine 0.10.7 fails in two places:

1. ``init_dist`` calls ``torch.cuda.set_device(local_rank)`` before creating
   the process group. A CUDA build of torch raises ``RuntimeError: Found no
   NVIDIA driver``, a CPU build ``AttributeError``.
2. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP, which
   DDP rejects for CPU modules.

:func:`setup_cpu_distributed` avoids both through mmengine's own extension
points: it creates a gloo process group before the Runner exists (the Runner
then skips ``init_dist``) and points ``model_wrapper_cfg`` at
:class:`CPUDistributedDataParallel`. Nothing in mmengine is patched.
"""
import copy
import datetime
import os
import subprocess
from typing import Optional

from mmengine.device import get_device
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from .model_wrapper import CPUDistributedDataParallel

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# Backends whose collectives run on CPU tensors.
CPU_BACKENDS = ('gloo', 'mpi')
DEFAULT_PORT = 29500


def check_launcher(launcher: str) -> None:
    """Raise a ValueError unless ``launcher`` is one of :data:`LAUNCHERS`.

    Args:
        launcher (str): The ``launcher`` field of a config / CLI.
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


def _slurm_master_addr(node_list: str) -> str:
    """First host name of a SLURM node list (``node[1-4]`` -> ``node1``)."""
    hosts = subprocess.getoutput(f'scontrol show hostname {node_list}')
    return hosts.splitlines()[0].strip() if hosts.strip() else node_list


def init_cpu_dist(launcher: str,
                  backend: str = 'gloo',
                  timeout: Optional[float] = None,
                  port: Optional[int] = None,
                  **kwargs) -> None:
    """Create the default process group without touching CUDA.

    The rank, world size and local rank come from the launcher's environment
    (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun, ``SLURM_*`` from
    srun, ``OMPI_COMM_WORLD_*`` from Open MPI) and are exported as
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` so the rest of mmengine sees the
    same values it would after its own ``init_dist``.

    Args:
        launcher (str): 'pytorch', 'slurm' or 'mpi'.
        backend (str): A backend with CPU collectives, 'gloo' or 'mpi'.
            Defaults to 'gloo'.
        timeout (float, optional): Collective timeout in seconds, as in
            mmengine's ``env_cfg.dist_cfg.timeout``. Defaults to None (the
            torch default).
        port (int, optional): Master port for the slurm launcher (as in
            mmengine); otherwise ``MASTER_PORT`` or 29500.
        **kwargs: Passed to ``torch.distributed.init_process_group``.
    """
    check_launcher(launcher)
    if launcher == 'none':
        raise ValueError("init_cpu_dist needs a distributed launcher, "
                         "got launcher='none'")
    if backend not in CPU_BACKENDS:
        raise ValueError(f'backend must be one of {CPU_BACKENDS} for CPU '
                         f'processes, but got backend={backend!r}')

    if launcher == 'pytorch':
        rank = _env_int('RANK', launcher)
        world_size = _env_int('WORLD_SIZE', launcher)
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
    elif launcher == 'slurm':
        rank = _env_int('SLURM_PROCID', launcher)
        world_size = _env_int('SLURM_NTASKS', launcher)
        local_rank = int(os.environ.get('SLURM_LOCALID', 0))
        if port is not None:
            os.environ['MASTER_PORT'] = str(port)
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = _slurm_master_addr(
                os.environ.get('SLURM_NODELIST', '127.0.0.1'))
    else:  # mpi
        rank = _env_int('OMPI_COMM_WORLD_RANK', launcher)
        world_size = _env_int('OMPI_COMM_WORLD_SIZE', launcher)
        local_rank = int(os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', 0))

    os.environ.setdefault('MASTER_PORT', str(DEFAULT_PORT))
    if 'MASTER_ADDR' not in os.environ:
        raise RuntimeError(
            f'launcher={launcher!r} needs the environment variable '
            'MASTER_ADDR (the address of the rank-0 host), which is not set.')
    os.environ['RANK'] = str(rank)
    os.environ['WORLD_SIZE'] = str(world_size)
    os.environ['LOCAL_RANK'] = str(local_rank)

    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(
        backend=backend,
        init_method='env://',
        rank=rank,
        world_size=world_size,
        **kwargs)


def _is_mmengine_ddp(wrapper_type) -> bool:
    """Whether a ``model_wrapper_cfg.type`` names the stock mmengine DDP."""
    if wrapper_type is MMDistributedDataParallel:
        return True
    return isinstance(wrapper_type, str) and wrapper_type.split(
        '.')[-1] == 'MMDistributedDataParallel'


def cpu_model_wrapper_cfg(cfg) -> dict:
    """The ``model_wrapper_cfg`` to use for CPU processes.

    - No ``model_wrapper_cfg``: :class:`CPUDistributedDataParallel` with the
      arguments the Runner itself would use (``broadcast_buffers=False``,
      ``find_unused_parameters`` from the config).
    - ``MMDistributedDataParallel`` (named or implied): the same arguments,
      with the type switched to :class:`CPUDistributedDataParallel`.
    - Another DDP subclass: kept, with ``device_ids=None`` set explicitly
      (the config's value wins over the Runner's ``device_ids=[rank]``).
    - Anything else (not a DDP): kept as it is.

    Args:
        cfg (Config): The full config.

    Returns:
        dict: The wrapper config.
    """
    wrapper_cfg = cfg.get('model_wrapper_cfg')
    if wrapper_cfg is None:
        return dict(
            type=CPUDistributedDataParallel.__name__,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg = copy.deepcopy(dict(wrapper_cfg))
    wrapper_type = wrapper_cfg.get('type', 'MMDistributedDataParallel')
    if _is_mmengine_ddp(wrapper_type):
        wrapper_cfg['type'] = CPUDistributedDataParallel.__name__
        return wrapper_cfg
    wrapper_cls = (
        MODEL_WRAPPERS.get(wrapper_type)
        if isinstance(wrapper_type, str) else wrapper_type)
    if (isinstance(wrapper_cls, type)
            and issubclass(wrapper_cls, DistributedDataParallel)
            and not issubclass(wrapper_cls, CPUDistributedDataParallel)):
        wrapper_cfg['device_ids'] = None
    return wrapper_cfg


def setup_cpu_distributed(cfg) -> bool:
    """Prepare ``cfg`` (and the process group) for CPU distributed runs.

    Does nothing, and returns False, when ``cfg.launcher`` is 'none' or an
    accelerator is present (mmengine's own path then applies unchanged).
    Otherwise it switches ``env_cfg.dist_cfg.backend`` to gloo unless it is
    already a CPU backend, initialises the process group (unless one exists)
    and sets ``cfg.model_wrapper_cfg`` (see :func:`cpu_model_wrapper_cfg`).
    Call it after the codebase's scope is set up and before building the
    Runner.

    Args:
        cfg (Config): The full config; changed in place.

    Returns:
        bool: True when the CPU distributed set-up was applied.
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
