"""The versions of torch and the OpenMMLab stack that mmtranscnn works with.

:data:`REQUIREMENTS` is the one place these ranges are written down.
``setup.py`` turns it into ``install_requires`` and the extras, and
``import mmtranscnn`` checks the installed versions against it
(:func:`check_installed_versions`) before it imports mmcv or mmengine, so a
version outside a range stops with the package's name, the installed version
and the range instead of an error from deep inside mmcv.

Installed versions are read from the packages' metadata
(``importlib.metadata``): the check imports none of them, so an optional
codebase that is not installed costs nothing and is not an error.

The exact versions ``scripts/setup.sh`` installs for CI live in
``requirements/pinned.txt`` and ``requirements/torch.txt``; the tests check
that they lie inside these ranges.

``setup.py`` loads this file on its own, without importing the package (and
torch), so the module's top level uses the standard library only.
"""
import importlib.util
import os
import warnings
from importlib import metadata
from typing import List, NamedTuple, Optional, Sequence, Tuple

#: Set to 1 to turn the error on a version outside a range into a warning
#: (trying a release of the stack that is newer than the tested ones).
SKIP_CHECK_ENV = 'MMTRANSCNN_SKIP_VERSION_CHECK'


class Requirement(NamedTuple):
    """One package mmtranscnn needs, and the versions it works with.

    Args:
        name: the distribution's name on PyPI.
        specifier: PEP 440 version range, e.g. ``'>=2.1.0,<2.2.0'``.
        extra: None when every install needs it, else the name of the
            ``setup.py`` extra that installs it (an optional codebase;
            the extra ``optional`` installs all of them).
        module: the name it is imported by.
        why: where the bounds come from.
        aliases: other distribution names that install the same module.
        companions: what its models import without declaring it
            (installed with it by its extra).
    """
    name: str
    specifier: str
    extra: Optional[str]
    module: str
    why: str
    aliases: Tuple[str, ...] = ()
    companions: Tuple[str, ...] = ()

    def __str__(self) -> str:
        return f'{self.name}{self.specifier}'


REQUIREMENTS = (
    Requirement(
        'torch', '>=2.0,<2.15', None, 'torch',
        'H-MHSA calls F.scaled_dot_product_attention (torch 2.0); tested '
        'on 2.14.1 (whole suite), 2.1.2 and 2.0.1 (model tests); 2.15 is '
        'untested'),
    Requirement(
        'mmcv', '>=2.1.0,<2.2.0', None, 'mmcv',
        'mmdet 3.2.0 is the first mmdet to accept mmcv 2.1; mmdet 3.3.0 '
        'and mmsegmentation 1.2.2 refuse mmcv 2.2; tested on 2.1.0',
        aliases=('mmcv-lite', )),
    Requirement(
        'mmengine', '>=0.10.3,<1.0.0', None, 'mmengine',
        'from 0.10.3 on, --resume continues an iteration-based run where it '
        'stopped (earlier releases restart the epoch\'s data); mmdet, mmseg '
        'and mmpretrain all refuse 1.0; tested on 0.10.7 (whole suite) and '
        '0.10.3 (tools, checkpoint and registry tests)'),
    Requirement(
        'mmdet', '>=3.2.0,<3.4.0', 'mmdet', 'mmdet',
        '3.2.0 is the first mmdet to accept mmcv 2.1; tested on 3.3.0 '
        '(whole suite) and 3.2.0 (model and config tests)'),
    Requirement(
        'mmsegmentation', '>=1.2.1,<1.3.0', 'mmseg', 'mmseg',
        '1.2.0 accepts mmcv 2.1, but its wheel lacks the tokenizer '
        'vocabulary that mmseg.models reads at import; tested on 1.2.2 '
        '(whole suite) and 1.2.1 (model and config tests)',
        # mmseg.models imports its text tokenizer's dependencies.
        companions=('ftfy', 'regex')),
    Requirement(
        'mmpretrain', '>=1.1.0,<1.3.0', 'mmpretrain', 'mmpretrain',
        '1.1.0 is the first mmpretrain to accept mmcv 2.1; tested on 1.2.0 '
        '(whole suite) and 1.1.0 (model and config tests)'),
)


#: What ``pip install 'mmtranscnn[deploy]'`` adds for export to ONNX Runtime
#: (tools/deployment/deploy.py, docs/deployment.md). ``import mmtranscnn``
#: does not check these (it imports none of them); the deploy tool does,
#: with :func:`check_deploy_versions`.
DEPLOY_REQUIREMENTS = (
    Requirement(
        'mmdeploy', '>=1.3.1,<1.4.0', 'deploy', 'mmdeploy',
        '1.3.1 is the first release for mmdet 3.3 / mmseg 1.2 and the '
        'last one; it declares protobuf<=3.20.2, which decides the '
        'versions of onnx and onnxruntime below'),
    Requirement(
        'onnx', '>=1.17.0,<1.18.0', 'deploy', 'onnx',
        '1.17 is the first built for numpy 2; 1.18 needs protobuf>=4.25.1, '
        'which mmdeploy 1.3.1 refuses'),
    Requirement(
        'onnxruntime', '>=1.19.0,<1.27.0', 'deploy', 'onnxruntime',
        '1.19 is the first built for numpy 2; 1.27 needs protobuf>=4.25.8, '
        'which mmdeploy 1.3.1 refuses; tested on 1.26.0'),
    Requirement(
        'onnxscript', '>=0.7.2,<1.0.0', 'deploy', 'onnxscript',
        'torch.onnx.export(dynamo=True) needs it; 0.7.2 accepts '
        'onnx 1.17 and leaves protobuf alone; tested on 0.7.2'),
)


class IncompatibleVersionError(ImportError):
    """An installed package's version lies outside mmtranscnn's range."""


def codebase_extras() -> List[str]:
    """The names of the ``setup.py`` extras of the optional codebases."""
    return [req.extra for req in REQUIREMENTS if req.extra]


def requirement_strings(extra: Optional[str] = None) -> List[str]:
    """``'name>=a,<b'`` lines (and companions) for ``setup.py``.

    Args:
        extra: None for ``install_requires``; a name from
            :func:`codebase_extras`; ``'optional'`` for all codebases; or
            ``'deploy'`` for :data:`DEPLOY_REQUIREMENTS`.
    """
    if extra == 'deploy':
        return [str(req) for req in DEPLOY_REQUIREMENTS]
    if extra is not None and extra != 'optional' and \
            extra not in codebase_extras():
        raise ValueError(f'extra must be None, \'optional\', \'deploy\' '
                         f'or one of {codebase_extras()}, got {extra!r}')
    lines = []
    for req in REQUIREMENTS:
        if req.extra == extra or (extra == 'optional' and req.extra):
            lines += [str(req), *req.companions]
    return lines


def installed_version(req: Requirement) -> Optional[str]:
    """The installed version of ``req`` from its metadata, or None."""
    for name in (req.name, ) + req.aliases:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def version_problems(
        requirements: Sequence[Requirement] = REQUIREMENTS
) -> List[Tuple[Requirement, str]]:
    """``(requirement, message)`` for each installed package outside its
    range and each needed package that is missing; empty when all fit.

    Args:
        requirements: what to check. Default: :data:`REQUIREMENTS`, where
            the codebases (``extra`` set) may be absent; of
            :data:`DEPLOY_REQUIREMENTS` every one is needed.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for req in requirements:
        version = installed_version(req)
        if version is None:
            # A module that imports without metadata (a source checkout on
            # PYTHONPATH) has no version to compare: let it be.
            needed = req.extra is None or req.extra == 'deploy'
            if needed and not _importable(req.module):
                how = (f" (pip install 'mmtranscnn[{req.extra}]')"
                       if req.extra else '')
                problems.append((req, f'{req.name} is not installed; '
                                 f'mmtranscnn needs {req}{how}'))
            continue
        try:
            parsed = Version(version)
        except InvalidVersion:
            continue  # e.g. a vendor build with its own numbering
        # prereleases=True: mmcv 2.0.0rc4 and torch nightlies are compared
        # by their numbers like any other version.
        if not SpecifierSet(req.specifier).contains(parsed, prereleases=True):
            problems.append((req, f'{req.name} {version} is installed; '
                             f'mmtranscnn needs {req} ({req.why})'))
    return problems


def _skip_requested() -> bool:
    value = os.environ.get(SKIP_CHECK_ENV, '').strip().lower()
    if value in ('', '0', 'false', 'off', 'no'):
        return False
    if value in ('1', 'true', 'on', 'yes'):
        return True
    raise ValueError(f'{SKIP_CHECK_ENV} must be 1 or 0, got {value!r}')


def check_installed_versions(
        requirements: Sequence[Requirement] = REQUIREMENTS,
        what: str = 'mmtranscnn') -> None:
    """Raise :class:`IncompatibleVersionError` naming every installed
    package outside its range, with the installed version and the range.

    With ``MMTRANSCNN_SKIP_VERSION_CHECK=1`` the same message is a warning.

    Args:
        requirements: what to check (see :func:`version_problems`).
        what: what cannot run, for the message. Default: 'mmtranscnn'.
    """
    problems = version_problems(requirements)
    if not problems:
        return
    ranges = ' '.join(f"'{req}'" for req, _ in problems)
    message = (f'{what} cannot run with the installed versions:\n'
               + ''.join(f'  - {text}\n' for _, text in problems)
               + f'Install versions in range, e.g. pip install {ranges}; or '
               f'set {SKIP_CHECK_ENV}=1 to try these versions anyway.')
    if _skip_requested():
        warnings.warn(message, stacklevel=2)
        return
    raise IncompatibleVersionError(message)


def check_deploy_versions() -> None:
    """:func:`check_installed_versions` for :data:`DEPLOY_REQUIREMENTS`:
    mmdeploy, onnx and onnxruntime must be installed, in their ranges."""
    check_installed_versions(DEPLOY_REQUIREMENTS,
                             'export to ONNX Runtime (mmtranscnn[deploy])')
