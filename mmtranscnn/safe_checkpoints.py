"""Opt-in module: importing it lets mmengine read mmengine checkpoints.

For runs outside our tools (which do this themselves), e.g. mmdet's own
``tools/train.py`` resuming a run::

    custom_imports = dict(
        imports=['mmtranscnn', 'mmtranscnn.safe_checkpoints'],
        allow_failed_imports=False)

It adds the globals mmengine and numpy write into checkpoints to torch's
``weights_only`` allow-list for the process (see
:mod:`mmtranscnn.utils.safe_loading`); nothing else is unpickled.
"""
from mmtranscnn.utils.safe_loading import allow_checkpoint_globals

allow_checkpoint_globals()
