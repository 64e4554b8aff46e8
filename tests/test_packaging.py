"""Packaging: the mim layout in wheels, sdists and editable installs."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import mmtranscnn

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MIM_FILES = ('configs/retinanet_transcnn_base.py',
             'configs/imagenet/transcnn-base_8xb128_in1k.py',
             'tools/train.py', 'tools/dist_train.sh', 'model-index.yml')


def _copy_source(dst):
    """The tracked/untracked source tree without environments or outputs."""
    ignore = shutil.ignore_patterns('.git', '.venv', 'work_dirs', 'data',
                                    'build', 'dist', '*.egg-info', '.mim',
                                    '__pycache__', 'outputs')
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=False)
    return dst


def _pip(*args, cwd):
    proc = subprocess.run([sys.executable, '-m', 'pip', *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_editable_install_links_mim_files():
    """`pip install -e .` (what scripts/setup.sh does) links, not copies."""
    mim_dir = osp.join(osp.dirname(mmtranscnn.__file__), '.mim')
    for rel in MIM_FILES:
        path = osp.join(mim_dir, rel)
        assert osp.isfile(path), path
        assert osp.realpath(path) == osp.realpath(osp.join(REPO, rel))


@pytest.mark.slow
def test_sdist_and_wheel_carry_mim_files(tmp_path):
    src = _copy_source(tmp_path / 'src')
    subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '-d',
                    str(tmp_path / 'sdist')], cwd=src, check=True,
                   capture_output=True, timeout=300)
    (sdist, ) = os.listdir(tmp_path / 'sdist')
    with tarfile.open(tmp_path / 'sdist' / sdist) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    for rel in MIM_FILES + ('requirements/runtime.txt', 'README.md'):
        assert rel in names, rel

    # A wheel built from the sdist, as pip does for users.
    _pip('wheel', '--no-deps', '--no-build-isolation', '-w',
         str(tmp_path / 'wheel'), str(tmp_path / 'sdist' / sdist),
         cwd=tmp_path)
    (wheel, ) = os.listdir(tmp_path / 'wheel')
    with zipfile.ZipFile(tmp_path / 'wheel' / wheel) as zf:
        names = set(zf.namelist())
    for rel in MIM_FILES:
        assert f'mmtranscnn/.mim/{rel}' in names, rel
    assert 'mmtranscnn/models/hmhsa.py' in names
    assert not any(n.startswith(('tests/', 'configs/')) for n in names)
