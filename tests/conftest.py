"""Fixtures shared by several test files."""
import glob
import os.path as osp
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def copy_source(dst):
    """The repository's source tree, without environments and outputs."""
    at_root = {'.git', '.venv', 'work_dirs', 'data', 'build', 'dist',
               'outputs', '.pytest_cache'}
    anywhere = shutil.ignore_patterns('*.egg-info', '.mim', '__pycache__')

    def ignore(directory, names):
        # data/ and the like only at the top: tools/data/ is source.
        skipped = set(anywhere(directory, names))
        if osp.samefile(directory, REPO):
            skipped |= at_root & set(names)
        return skipped

    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


@pytest.fixture(scope='session')
def built_dists(tmp_path_factory):
    """``SimpleNamespace(sdist=, wheel=)``: the sdist of the source tree and
    the wheel pip builds from it (what a user's ``pip install`` gets),
    built once for the whole test session."""
    root = tmp_path_factory.mktemp('dists')
    src = copy_source(root / 'src')
    subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '-d',
                    str(root / 'sdist')], cwd=src, check=True,
                   capture_output=True, timeout=300)
    (sdist, ) = glob.glob(str(root / 'sdist' / '*.tar.gz'))
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
         '--no-build-isolation', '-w', str(root / 'wheel'), sdist],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel, ) = glob.glob(str(root / 'wheel' / '*.whl'))
    shutil.rmtree(src)  # only the two files are needed from here on
    return SimpleNamespace(sdist=sdist, wheel=wheel)


@pytest.fixture(scope='module')
def module_tmp(request, tmp_path_factory):
    """``mktemp(name)``: a directory for runs shared by a module's tests.

    What it made is removed after the module's last test when none of the
    module's tests failed (pytest keeps the ``tmp_path`` of failed tests
    only, pytest.ini): training runs hold checkpoints of hundreds of MB,
    and the next module's runs should not add up with them.
    """
    failed_before = request.session.testsfailed
    made = []

    def mktemp(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
