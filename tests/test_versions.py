"""Version ranges (setup.py), the pins of scripts/setup.sh, and the mmcv
check that ``import mmtranscnn`` makes (mmtranscnn/utils/versions.py)."""
import os
import os.path as osp
import re
import subprocess
import sys
from functools import lru_cache

import mmcv
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from mmtranscnn.utils.versions import MMCV_RANGE, SKIP_CHECK_ENV, check_mmcv

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CODEBASES = {'mmdet', 'mmsegmentation', 'mmpretrain'}
DEPLOY = {'mmdeploy', 'onnx', 'onnxruntime', 'onnxscript'}


@lru_cache(maxsize=None)
def _setup_py():
    """What setup.py passes to ``setuptools.setup`` (nothing is built), as
    attributes: ``install_requires``, ``extras_require``, ...

    (Not distutils' ``run_setup``: which distutils a fresh virtualenv
    imports, the standard library's or setuptools' own, decides whether it
    sees the call.)
    """
    import runpy
    import types
    from unittest import mock
    captured = {}
    with mock.patch('setuptools.setup', lambda **kw: captured.update(kw)):
        runpy.run_path(osp.join(REPO, 'setup.py'), run_name='__main__')
    return types.SimpleNamespace(**captured)


def declared_requirements():
    """``(install_requires, {extra: requirements})`` of setup.py, parsed."""
    dist = _setup_py()
    return ([Requirement(line) for line in dist.install_requires],
            {extra: [Requirement(line) for line in lines]
             for extra, lines in dist.extras_require.items()})


def ranges():
    """{name: specifier} of every package setup.py gives a version range."""
    install_requires, extras = declared_requirements()
    reqs = install_requires + sum(extras.values(), [])
    return {r.name: r.specifier for r in reqs if r.specifier}


# -- the ranges in setup.py ---------------------------------------------------
def test_every_range_has_both_bounds_and_none_is_a_pin():
    found = ranges()
    assert set(found) == {'torch', 'mmcv', 'mmengine'} | CODEBASES | DEPLOY
    for name, spec in found.items():
        assert {s.operator for s in spec} == {'>=', '<'}, (name, spec)
    install_requires, extras = declared_requirements()
    assert {r.name for r in install_requires} >= {'torch', 'mmcv',
                                                  'mmengine'}
    assert {r.name for r in extras['optional']} >= CODEBASES
    assert {r.name for r in extras['deploy']} == DEPLOY


def test_torch_floor_is_2_6():
    """torch.load's weights_only=True default and its (obj, name)
    allow-list, which safe checkpoint loading relies on, start at 2.6."""
    torch_range = ranges()['torch']
    assert '2.6.0' in torch_range and '2.14.1' in torch_range
    assert '2.5.1' not in torch_range and '2.15.0' not in torch_range


def test_codebase_extras():
    _, extras = declared_requirements()
    names = {extra: {r.name for r in reqs} for extra, reqs in extras.items()}
    assert names['mmdet'] == {'mmdet'}
    # mmseg.models imports its tokenizer's undeclared dependencies
    assert names['mmseg'] == {'mmsegmentation', 'ftfy', 'regex'}
    assert names['mmpretrain'] == {'mmpretrain'}
    assert names['optional'] == (names['mmdet'] | names['mmseg']
                                 | names['mmpretrain'])
    assert names['all'] == names['optional'] | DEPLOY | names['tests']


# -- the pins of scripts/setup.sh lie inside the ranges -----------------------
def read_pins(name):
    pins = {}
    with open(osp.join(REPO, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                req = Requirement(line)
                (spec, ) = req.specifier
                assert spec.operator == '==', line
                pins[req.name] = spec.version
    return pins


def setup_sh():
    with open(osp.join(REPO, 'scripts', 'setup.sh')) as f:
        return f.read()


def test_setup_sh_pins_lie_inside_the_ranges():
    (mmcv_pin, ) = re.findall(r'^MMCV_VERSION=(\S+)$', setup_sh(), re.M)
    pins = dict(read_pins('pinned.txt'), **read_pins('torch.txt'),
                mmcv=mmcv_pin)
    for name, spec in ranges().items():
        assert name in pins, f'setup.sh installs no pinned {name}'
        assert pins[name] in spec, f'{name}=={pins[name]} is outside {spec}'


def test_setup_sh_python_lies_inside_python_requires():
    (low, high), = re.findall(
        r'assert \((\d+, \d+)\) <= sys\.version_info\[:2\] <= '
        r'\((\d+, \d+)\)', setup_sh())
    accepted = SpecifierSet(_setup_py().python_requires)
    for bound in (low, high):
        assert bound.replace(', ', '.') in accepted, (bound, accepted)


def test_readme_table_states_the_ranges_of_setup_py():
    """Each row of README's table names a package and its range as
    setup.py declares them (the Python row: python_requires)."""
    with open(osp.join(REPO, 'README.md')) as f:
        rows = dict(re.findall(r'^\| ([\w ()]+?) \| ([^|]+?) \|', f.read(),
                               re.M))
    assert SpecifierSet(rows['Python'].replace(' ', '')) == \
        SpecifierSet(_setup_py().python_requires)
    for name, spec in ranges().items():
        if name in DEPLOY:
            continue  # one row for all four; docs/deployment.md has them
        row = 'mmcv (with ops)' if name == 'mmcv' else name
        assert SpecifierSet(rows[row].replace(' ', '')) == spec, name


# -- the mmcv check of import mmtranscnn -------------------------------------
def test_check_uses_the_mmcv_range_of_setup_py():
    assert SpecifierSet(MMCV_RANGE) == ranges()['mmcv']


def test_this_environment_passes_the_check(monkeypatch):
    monkeypatch.delenv(SKIP_CHECK_ENV, raising=False)
    check_mmcv()


@pytest.mark.parametrize('version', ['2.2.0', '2.0.1'])
def test_mmcv_outside_the_range_stops_naming_version_and_range(
        monkeypatch, version):
    monkeypatch.delenv(SKIP_CHECK_ENV, raising=False)
    monkeypatch.setattr(mmcv, '__version__', version)
    with pytest.raises(ImportError) as info:
        check_mmcv()
    message = str(info.value)
    assert f'mmcv {version} is installed' in message
    assert f'mmcv{MMCV_RANGE}' in message
    # the escape hatch lets it through
    monkeypatch.setenv(SKIP_CHECK_ENV, '1')
    check_mmcv()


def test_mmcv_without_compiled_ops_stops(monkeypatch):
    """As with mmcv-lite or an mmcv built without MMCV_WITH_OPS=1."""
    monkeypatch.delenv(SKIP_CHECK_ENV, raising=False)
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)  # import fails
    with pytest.raises(ImportError, match='without its compiled ops') as info:
        check_mmcv()
    assert f'mmcv {mmcv.__version__} is installed' in str(info.value)
    assert f'mmcv{MMCV_RANGE}' in str(info.value)


def test_import_mmtranscnn_stops_on_an_mmcv_outside_the_range():
    """In a fresh interpreter: the check runs before the models register."""
    code = ('import sys, mmcv\n'
            "mmcv.__version__ = '2.2.0'\n"
            'try:\n'
            '    import mmtranscnn\n'
            'except ImportError as error:\n'
            '    print(error)\n'
            "print('registered:', 'mmtranscnn.registry' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != SKIP_CHECK_ENV}
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'mmcv 2.2.0 is installed; mmtranscnn needs mmcv{MMCV_RANGE}' \
        in out.stdout, out.stdout
    assert 'registered: False' in out.stdout
