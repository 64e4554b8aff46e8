"""Opt-in module: importing it makes mmengine load checkpoints safely.

For runs that do not go through our tools (which switch this on
themselves), e.g. mmdet's own ``tools/train.py`` with a resumed run::

    custom_imports = dict(
        imports=['mmtranscnn', 'mmtranscnn.safe_checkpoints'],
        allow_failed_imports=False)

What it changes is described in :mod:`mmtranscnn.utils.checkpoint_safety`:
mmengine's ``CheckpointLoader`` reads files with ``weights_only=True`` plus an
allow-list of what mmengine and numpy write, instead of failing on them (torch
>= 2.6); ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` keeps its documented meaning.
"""
from mmtranscnn.utils.checkpoint_safety import enable_safe_checkpoint_loading

enable_safe_checkpoint_loading()
