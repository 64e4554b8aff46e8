"""Packaging for mmtranscnn.

Besides the Python package, OpenMMLab's ``mim`` expects ``configs/``,
``tools/`` and ``model-index.yml`` inside the installed package as
``mmtranscnn/.mim/``. Wheels and sdists get copies; an editable install
(``pip install -e .``, which runs ``build_py`` in editable mode rather than the
old ``develop`` command) gets symlinks into the source tree, so edits to a
config are seen at once.
"""
import importlib.util
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))
MIM_ITEMS = ('configs', 'tools', 'model-index.yml')


def read_version() -> str:
    scope = {}
    with open(osp.join(HERE, 'mmtranscnn', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def load_version_ranges():
    """``mmtranscnn/utils/versions.py``, the one table of the version ranges
    of torch and the OpenMMLab stack (also what ``import mmtranscnn``
    checks). Loaded on its own: building must not import torch or mmcv."""
    path = osp.join(HERE, 'mmtranscnn', 'utils', 'versions.py')
    spec = importlib.util.spec_from_file_location('_mmtranscnn_versions',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VERSIONS = load_version_ranges()


def read_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt`` (comments dropped)."""
    path = osp.join(HERE, 'requirements', f'{name}.txt')
    with open(path) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def link_mim_files_into_source() -> None:
    """Point ``mmtranscnn/.mim/*`` at the repo's configs/tools (editable)."""
    mim_dir = osp.join(HERE, 'mmtranscnn', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for item in MIM_ITEMS:
        src = osp.join(HERE, item)
        dst = osp.join(mim_dir, item)
        if not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        os.symlink(osp.relpath(src, mim_dir), dst)


class BuildPyWithMim(build_py):
    """build_py that also ships configs/tools/model-index.yml for mim."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            link_mim_files_into_source()
            return
        mim_dir = osp.join(self.build_lib, 'mmtranscnn', '.mim')
        os.makedirs(mim_dir, exist_ok=True)
        for item in MIM_ITEMS:
            src = osp.join(HERE, item)
            dst = osp.join(mim_dir, item)
            if not osp.exists(src):
                continue
            if osp.isdir(src):
                shutil.copytree(
                    src, dst, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                shutil.copyfile(src, dst)


setup(
    name='mmtranscnn',
    version=read_version(),
    description='TransCNN (hierarchical MHSA + convolutions) as an '
    'OpenMMLab backbone for MMDetection, MMSegmentation and MMPretrain',
    long_description=open(osp.join(HERE, 'README.md')).read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE'],
    python_requires='>=3.9',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'demo')),
    include_package_data=True,
    cmdclass={'build_py': BuildPyWithMim},
    # Ranges, not pins: installing into an environment that already has a
    # supported stack changes none of it. scripts/setup.sh pins for CI.
    install_requires=VERSIONS.requirement_strings() +
    read_requirements('runtime'),
    # `pip install mmtranscnn[mmdet]` (or mmseg, mmpretrain) adds the
    # codebase in its range; [optional] all three; [deploy] mmdeploy, onnx
    # and onnxruntime (and onnxscript); [all] all of these and the tests.
    extras_require=dict(
        {extra: VERSIONS.requirement_strings(extra)
         for extra in VERSIONS.codebase_extras()},
        optional=VERSIONS.requirement_strings('optional'),
        deploy=VERSIONS.requirement_strings('deploy'),
        tests=read_requirements('tests'),
        all=VERSIONS.requirement_strings('optional') +
        VERSIONS.requirement_strings('deploy') +
        read_requirements('tests')),
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
