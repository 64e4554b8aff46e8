"""mmtranscnn: TransCNN as an OpenMMLab backbone.

Importing the package registers ``TransCNN`` (and its building blocks) in the
``mmtranscnn`` model registry and, for each of mmdet, mmseg and mmpretrain that
is installed, in that codebase's registry too, so ``type='TransCNN'`` resolves
after ``custom_imports=dict(imports=['mmtranscnn'])``. It also adds the
authors' eight released classifiers to mmpretrain's model hub and registers
a checkpoint loader for exactly their download links with mmengine's
``CheckpointLoader`` (see :mod:`mmtranscnn.models.pretrain_hub`).

That is all an import changes in the process. mmengine's loading of any
other checkpoint is left as it is; our tools (``tools/train.py``, ``tools/test.py``, the
demos and converters) switch on safe loading of mmengine checkpoints
explicitly, and a config run by another entry point opts in with
``custom_imports=dict(imports=['mmtranscnn', 'mmtranscnn.safe_checkpoints'])``
(see :mod:`mmtranscnn.utils.checkpoint_safety`).
"""
from .version import __version__, version_info
# Before mmcv and mmengine are imported: an installed version outside the
# ranges in utils/versions.py stops here, naming the package and the range.
from .utils.versions import check_installed_versions

check_installed_versions()

from .registry import MODELS  # noqa: E402
from . import models  # noqa: F401,E402  (registers the models)
from .config_path import get_config_path  # noqa: E402  (configs' _base_)

__all__ = ['__version__', 'version_info', 'MODELS', 'get_config_path']
