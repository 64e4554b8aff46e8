"""Registries of mmtranscnn.

``MODELS`` is a child of mmengine's root model registry with the scope
``mmtranscnn``. Because mmengine imports ``<scope>.registry`` on demand, a
config in any scope (mmdet, mmseg, mmpretrain) can write
``type='mmtranscnn.TransCNN'`` without a ``custom_imports`` line; the
``locations`` entry then imports the model modules so the name resolves.

``HOOKS`` holds the Runner hooks the shipped configs name the same way,
``type='mmtranscnn.WeightsOnlyCheckpointHook'``: mmdet's, mmseg's and
mmpretrain's own tools build them without importing anything first.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmtranscnn',
    locations=['mmtranscnn.models'])

HOOKS = Registry(
    'hook',
    parent=MMENGINE_HOOKS,
    scope='mmtranscnn',
    locations=['mmtranscnn.engine.weights_only'])
