"""Registries of mmtranscnn.

``MODELS`` is a child of mmengine's root model registry with the scope
``mmtranscnn``. Because mmengine imports ``<scope>.registry`` on demand, a
config in any scope (mmdet, mmseg, mmpretrain) can write
``type='mmtranscnn.TransCNN'`` without a ``custom_imports`` line; the
``locations`` entry then imports the model modules so the name resolves.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmtranscnn',
    locations=['mmtranscnn.models'])
