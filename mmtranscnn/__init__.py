"""mmtranscnn: TransCNN as an OpenMMLab backbone.

Importing the package registers ``TransCNN`` (and its building blocks) in the
``mmtranscnn`` model registry and, for each of mmdet, mmseg and mmpretrain that
is installed, in that codebase's registry too, so ``type='TransCNN'`` resolves
after ``custom_imports=dict(imports=['mmtranscnn'])``. It also adds the
authors' eight released classifiers to mmpretrain's model hub and registers
a checkpoint loader for exactly their download links with mmengine's
``CheckpointLoader`` (see :mod:`mmtranscnn.models.pretrain_hub`).

That is all an import changes in the process. Our tools add what mmengine
writes into checkpoints to torch's ``weights_only`` allow-list; another
entry point opts in with ``custom_imports=dict(imports=['mmtranscnn',
'mmtranscnn.safe_checkpoints'])`` (see :mod:`mmtranscnn.utils.safe_loading`).
"""
from .version import __version__, version_info
# pip holds torch and the stack to setup.py's ranges, but not an mmcv built
# from source or installed by mim: stop here, naming its version and range.
from .utils.versions import check_mmcv

check_mmcv()

from .registry import MODELS  # noqa: E402
from . import models  # noqa: F401,E402  (registers the models)
from .config_path import get_config_path  # noqa: E402  (configs' _base_)

__all__ = ['__version__', 'version_info', 'MODELS', 'get_config_path']
