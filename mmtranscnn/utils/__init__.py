"""Utilities of mmtranscnn that are not models."""
from .safe_loading import (allow_checkpoint_globals, checkpoint_safe_globals,
                           safe_load)

__all__ = ['allow_checkpoint_globals', 'checkpoint_safe_globals', 'safe_load']
