"""Utilities of mmtranscnn that are not models."""
from .checkpoint_safety import (TRUSTED_CHECKPOINTS_ENV,
                                UntrustedCheckpointError,
                                checkpoint_safe_globals,
                                enable_safe_checkpoint_loading,
                                is_trusted_checkpoint, mmengine_safe_globals,
                                safe_loading_enabled,
                                safe_torch_load, trust_checkpoint,
                                untrust_checkpoint)

__all__ = [
    'TRUSTED_CHECKPOINTS_ENV', 'UntrustedCheckpointError',
    'checkpoint_safe_globals', 'enable_safe_checkpoint_loading',
    'is_trusted_checkpoint', 'mmengine_safe_globals', 'safe_loading_enabled',
    'safe_torch_load',
    'trust_checkpoint', 'untrust_checkpoint'
]
