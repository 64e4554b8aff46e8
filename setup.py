"""Packaging for mmtranscnn.

Besides the Python package, OpenMMLab's ``mim`` expects ``configs/``,
``tools/`` and ``model-index.yml`` inside the installed package as
``mmtranscnn/.mim/``. Wheels and sdists get copies; an editable install
(``pip install -e .``, which runs ``build_py`` in editable mode rather than the
old ``develop`` command) gets symlinks into the source tree, so edits to a
config are seen at once.
"""
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


# Ranges, not pins: installing into an environment that already holds a
# supported stack changes none of it. scripts/setup.sh installs exact
# releases (requirements/pinned.txt, requirements/torch.txt), which
# tests/test_versions.py checks lie inside these ranges. Where the bounds
# come from:
# - torch 2.6: torch.load defaults to weights_only=True and takes the
#   (obj, 'module.name') allow-list that safe checkpoint loading uses;
#   2.15 is untested.
# - mmcv 2.1: mmdet 3.2 is the first mmdet to accept it; mmdet 3.3 and
#   mmsegmentation 1.2 refuse 2.2. `import mmtranscnn` checks this range
#   again (mmtranscnn/utils/versions.py): mmcv is often built outside pip.
# - mmengine 0.10.3: from it on, --resume continues an iteration-based run
#   where it stopped; mmdet, mmseg and mmpretrain refuse 1.0.
# - mmdet 3.2.0 and mmpretrain 1.1.0: the first to accept mmcv 2.1;
#   mmsegmentation 1.2.1: 1.2.0's wheel lacks the tokenizer vocabulary that
#   mmseg.models reads at import.
# - deploy: mmdeploy 1.3.1, its last release, declares protobuf<=3.20.2,
#   which onnx < 1.18 and onnxruntime < 1.27 accept; onnx 1.17 and
#   onnxruntime 1.19 are the first built for numpy 2; onnxscript serves
#   torch.onnx.export(dynamo=True).
INSTALL_REQUIRES = [
    'torch>=2.6,<2.15',
    'mmcv>=2.1.0,<2.2.0',
    'mmengine>=0.10.3,<1.0.0',
    'numpy',
    'packaging',  # the import check compares mmcv's version with it
]
CODEBASES = {
    'mmdet': ['mmdet>=3.2.0,<3.4.0'],
    # mmseg.models imports its text tokenizer's dependencies undeclared
    'mmseg': ['mmsegmentation>=1.2.1,<1.3.0', 'ftfy', 'regex'],
    'mmpretrain': ['mmpretrain>=1.1.0,<1.3.0'],
}
OPTIONAL = [line for lines in CODEBASES.values() for line in lines]
DEPLOY = ['mmdeploy>=1.3.1,<1.4.0', 'onnx>=1.17.0,<1.18.0',
          'onnxruntime>=1.19.0,<1.27.0', 'onnxscript>=0.7.2,<1.0.0']
TESTS = ['pytest', 'pytest-timeout']


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
    install_requires=INSTALL_REQUIRES,
    # `pip install mmtranscnn[mmdet]` (or mmseg, mmpretrain) adds the
    # codebase in its range; [optional] all three; [deploy] mmdeploy, onnx,
    # onnxruntime and onnxscript; [all] all of these and the tests.
    extras_require=dict(CODEBASES, optional=OPTIONAL, deploy=DEPLOY,
                        tests=TESTS, all=OPTIONAL + DEPLOY + TESTS),
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
