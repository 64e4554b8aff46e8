"""The few torch APIs whose form changed within the supported range.

mmtranscnn supports torch 2.0 to 2.14 (see setup.py). Between those,
autocast state and the gradient scaler moved to device-generic calls:

* ``torch.is_autocast_enabled(device_type)``,
  ``torch.set_autocast_enabled(device_type, enabled)`` and
  ``torch.get_autocast_dtype(device_type)`` exist from torch 2.4; before,
  the CPU had ``torch.is_autocast_cpu_enabled()`` /
  ``torch.set_autocast_cpu_enabled()`` / ``torch.get_autocast_cpu_dtype()``
  and the argument-free forms meant CUDA.
* ``torch.amp.GradScaler(device_type)`` exists from torch 2.3; before,
  ``torch.cuda.amp.GradScaler()`` (newer torch deprecates that one).
* ``torch.compiler.is_compiling()`` exists from torch 2.3; before,
  ``torch._dynamo.is_compiling()``.

Which form this torch has is decided once, at import.
"""
import torch


def _has_device_autocast_api() -> bool:
    try:
        torch.is_autocast_enabled('cpu')
    except TypeError:
        return False
    return True


DEVICE_AUTOCAST_API = _has_device_autocast_api()
_OLD_AUTOCAST = {
    'cpu': (torch.is_autocast_cpu_enabled, torch.set_autocast_cpu_enabled,
            torch.get_autocast_cpu_dtype)
    if not DEVICE_AUTOCAST_API else None,
    'cuda': (torch.is_autocast_enabled, torch.set_autocast_enabled,
             torch.get_autocast_gpu_dtype)
    if not DEVICE_AUTOCAST_API else None,
}


def _old_pair(device_type: str):
    pair = _OLD_AUTOCAST.get(device_type)
    if pair is None:
        raise ValueError(f'device_type must be one of {sorted(_OLD_AUTOCAST)}'
                         f' on torch {torch.__version__}, got {device_type!r}')
    return pair


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ('cpu', 'cuda', ...)."""
    if DEVICE_AUTOCAST_API:
        return torch.is_autocast_enabled(device_type)
    return _old_pair(device_type)[0]()


def set_autocast_enabled(device_type: str, enabled: bool) -> None:
    """Switch autocast for ``device_type`` on or off inside a region."""
    if DEVICE_AUTOCAST_API:
        torch.set_autocast_enabled(device_type, enabled)
    else:
        _old_pair(device_type)[1](enabled)


def get_autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts to on ``device_type`` (when it is on)."""
    if DEVICE_AUTOCAST_API:
        return torch.get_autocast_dtype(device_type)
    return _old_pair(device_type)[2]()


def _is_compiling_fn():
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling
    try:
        from torch._dynamo import is_compiling
    except ImportError:  # no dynamo: nothing is ever compiled
        return lambda: False
    return is_compiling


#: Whether dynamo (torch.compile, torch.export) is tracing the caller.
is_compiling = _is_compiling_fn()


def grad_scaler(device_type: str = 'cuda'):
    """A dynamic loss scaler for fp16 training on ``device_type``."""
    amp = getattr(torch, 'amp', None)
    if amp is not None and hasattr(amp, 'GradScaler'):
        return amp.GradScaler(device_type)
    if device_type != 'cuda':
        raise ValueError(f'torch {torch.__version__} has a GradScaler for '
                         f"device_type='cuda' only, got {device_type!r}")
    return torch.cuda.amp.GradScaler()


__all__ = ['DEVICE_AUTOCAST_API', 'get_autocast_dtype', 'grad_scaler',
           'is_autocast_enabled', 'is_compiling', 'set_autocast_enabled']
