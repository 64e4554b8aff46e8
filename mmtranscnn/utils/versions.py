"""The one version check ``import mmtranscnn`` makes: mmcv.

``setup.py`` declares the version ranges of torch and the OpenMMLab stack,
and pip's resolver holds an install to them. mmcv slips past the resolver:
it is often built from source or installed with ``mim``, and mmcv-lite (no
compiled ops) provides the same ``import mmcv``. mmdet, mmseg and
mmpretrain need both a version in range and the compiled ops, so the import
checks these two, the way mmdet's ``__init__`` checks mmcv's version.
"""
import importlib
import os

#: The same range as in setup.py (tests/test_versions.py checks they agree).
MMCV_RANGE = '>=2.1.0,<2.2.0'
#: Set to 1 to skip the check (to try an mmcv release outside the range).
SKIP_CHECK_ENV = 'MMTRANSCNN_SKIP_VERSION_CHECK'


def check_mmcv() -> None:
    """Raise ImportError, naming mmcv, its installed version and
    :data:`MMCV_RANGE`, when mmcv is outside the range or lacks its
    compiled ops (``mmcv._ext``)."""
    if os.environ.get(SKIP_CHECK_ENV) == '1':
        return
    import mmcv
    import torch  # noqa: F401  (mmcv._ext links against torch's libraries)
    from packaging.specifiers import SpecifierSet

    version = mmcv.__version__
    if not SpecifierSet(MMCV_RANGE).contains(version, prereleases=True):
        raise ImportError(
            f'mmcv {version} is installed; mmtranscnn needs '
            f'mmcv{MMCV_RANGE} (mim install "mmcv{MMCV_RANGE}", or build it '
            f'as docs/get_started.md says). Set {SKIP_CHECK_ENV}=1 to try '
            'this version anyway.')
    try:
        importlib.import_module('mmcv._ext')
    except ImportError as error:
        raise ImportError(
            f'mmcv {version} is installed without its compiled ops '
            f'(mmcv._ext: {error}); mmtranscnn needs mmcv{MMCV_RANGE} with '
            'them (not mmcv-lite): build it with MMCV_WITH_OPS=1 against '
            'the installed torch, as docs/get_started.md says.') from error
