"""mmtranscnn: TransCNN as an OpenMMLab backbone.

Importing the package registers ``TransCNN`` (and its building blocks) in the
``mmtranscnn`` model registry and, for each of mmdet, mmseg and mmpretrain that
is installed, in that codebase's registry too, so ``type='TransCNN'`` resolves
after ``custom_imports=dict(imports=['mmtranscnn'])``.
"""
from .version import __version__, version_info
from .registry import MODELS
from . import models  # noqa: F401  (registers the models)
from .utils import enable_safe_checkpoint_loading
from .config_path import get_config_path  # for downstream configs' _base_

# mmengine checkpoints load on torch >= 2.6 with weights_only=True kept.
enable_safe_checkpoint_loading()

__all__ = ['__version__', 'version_info', 'MODELS', 'get_config_path']
