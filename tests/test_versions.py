"""The version ranges of torch and the OpenMMLab stack, and the import check.

The check reads installed versions from package metadata; these tests give it
made-up metadata (a patched ``metadata.version``, or a ``*.dist-info`` folder
put first on ``sys.path`` of a fresh interpreter).
"""
import os
import os.path as osp
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement as PipRequirement
from packaging.specifiers import SpecifierSet

from mmtranscnn.utils import versions
from mmtranscnn.utils.versions import (REQUIREMENTS, SKIP_CHECK_ENV,
                                       IncompatibleVersionError,
                                       check_installed_versions,
                                       version_problems)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BY_NAME = {req.name: req for req in REQUIREMENTS}

# Versions inside every range, and none of them what scripts/setup.sh pins
# where the range holds another release.
IN_RANGE = {
    'torch': '2.1.2+cpu',
    'mmcv': '2.1.0',
    'mmengine': '0.10.4',
    'mmdet': '3.2.0',
    'mmsegmentation': '1.2.1',
    'mmpretrain': '1.1.1',
}


def fake_metadata(monkeypatch, installed):
    """Make ``versions`` see exactly ``installed`` ({name: version})."""

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(versions.metadata, 'version', version)
    monkeypatch.delenv(SKIP_CHECK_ENV, raising=False)


def test_every_range_has_both_bounds():
    assert set(BY_NAME) == {'torch', 'mmcv', 'mmengine', 'mmdet',
                            'mmsegmentation', 'mmpretrain'}
    for req in REQUIREMENTS:
        ops = {spec.operator for spec in SpecifierSet(req.specifier)}
        assert ops == {'>=', '<'}, req
        assert req.why, req
    optional = {req.name for req in REQUIREMENTS if req.extra}
    assert optional == {'mmdet', 'mmsegmentation', 'mmpretrain'}


def test_extras_of_the_codebases():
    assert versions.codebase_extras() == ['mmdet', 'mmseg', 'mmpretrain']
    assert versions.requirement_strings('mmseg') == [
        str(BY_NAME['mmsegmentation']), 'ftfy', 'regex']
    assert set(versions.requirement_strings('optional')) == set(
        sum((versions.requirement_strings(extra)
             for extra in versions.codebase_extras()), []))
    assert versions.requirement_strings() == [
        str(BY_NAME[name]) for name in ('torch', 'mmcv', 'mmengine')]
    with pytest.raises(ValueError, match="'mmdetection'"):
        versions.requirement_strings('mmdetection')


def test_in_range_passes(monkeypatch):
    fake_metadata(monkeypatch, IN_RANGE)
    assert version_problems() == []
    check_installed_versions()


def test_this_environment_is_in_range():
    assert version_problems() == []


@pytest.mark.parametrize('name,version', [
    ('mmengine', '1.0.0'), ('mmengine', '0.10.2'), ('mmcv', '2.2.0'),
    ('mmcv', '2.0.1'), ('torch', '1.13.1'), ('mmdet', '3.1.0'),
    ('mmsegmentation', '1.2.0'), ('mmpretrain', '1.0.2')])
def test_out_of_range_raises_naming_package_version_and_range(
        monkeypatch, name, version):
    fake_metadata(monkeypatch, dict(IN_RANGE, **{name: version}))
    with pytest.raises(IncompatibleVersionError) as info:
        check_installed_versions()
    message = str(info.value)
    spec = BY_NAME[name].specifier
    assert f'{name} {version} is installed' in message
    assert f'needs {name}{spec}' in message
    # The fix is in the message, and only the offending package is named.
    assert f"pip install '{name}{spec}'" in message
    assert len(re.findall(r'^  - ', message, re.M)) == 1
    assert isinstance(info.value, ImportError)


def test_every_problem_is_listed_at_once(monkeypatch):
    fake_metadata(monkeypatch, dict(IN_RANGE, mmengine='1.0.0',
                                    mmcv='2.2.0'))
    message = str(pytest.raises(IncompatibleVersionError,
                                check_installed_versions).value)
    assert 'mmengine 1.0.0 is installed' in message
    assert 'mmcv 2.2.0 is installed' in message


def test_absent_optional_codebases_are_fine(monkeypatch):
    fake_metadata(monkeypatch, {name: IN_RANGE[name]
                                for name in ('torch', 'mmcv', 'mmengine')})
    assert version_problems() == []


def test_mmcv_lite_counts_as_mmcv(monkeypatch):
    installed = dict(IN_RANGE)
    del installed['mmcv']
    fake_metadata(monkeypatch, dict(installed, **{'mmcv-lite': '2.2.0'}))
    assert 'mmcv 2.2.0 is installed' in version_problems()[0][1]


def test_missing_required_package_is_named(monkeypatch):
    installed = dict(IN_RANGE)
    del installed['mmengine']
    fake_metadata(monkeypatch, installed)
    monkeypatch.setattr(versions, '_importable', lambda module: False)
    message = str(pytest.raises(IncompatibleVersionError,
                                check_installed_versions).value)
    spec = BY_NAME['mmengine'].specifier
    assert f'mmengine is not installed; mmtranscnn needs mmengine{spec}' \
        in message
    # Importable without metadata (a source checkout): nothing to compare.
    monkeypatch.setattr(versions, '_importable', lambda module: True)
    assert version_problems() == []


def test_skip_variable_turns_the_error_into_a_warning(monkeypatch):
    fake_metadata(monkeypatch, dict(IN_RANGE, torch='2.15.0'))
    monkeypatch.setenv(SKIP_CHECK_ENV, '1')
    with pytest.warns(UserWarning, match=r'torch 2\.15\.0 is installed'):
        check_installed_versions()
    monkeypatch.setenv(SKIP_CHECK_ENV, 'maybe')
    with pytest.raises(ValueError, match=SKIP_CHECK_ENV):
        check_installed_versions()


def test_import_stops_before_mmengine_with_an_out_of_range_version(
        tmp_path):
    """A fresh interpreter that sees mmengine 1.0.0's metadata first."""
    dist_info = tmp_path / 'mmengine-1.0.0.dist-info'
    dist_info.mkdir()
    (dist_info / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: mmengine\nVersion: 1.0.0\n')
    code = ('import sys\n'
            'try:\n'
            '    import mmtranscnn\n'
            'except ImportError as error:\n'
            '    print(type(error).__name__, error)\n'
            "    print('mmengine imported:', 'mmengine' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop(SKIP_CHECK_ENV, None)
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300).stdout
    assert out.startswith('IncompatibleVersionError'), out
    spec = BY_NAME['mmengine'].specifier
    assert f'mmengine 1.0.0 is installed; mmtranscnn needs mmengine{spec}' \
        in out
    assert 'mmengine imported: False' in out


# -- one table: the pins of scripts/setup.sh lie inside it, no file copies it --
def read_pins(name):
    pins = {}
    with open(osp.join(REPO, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                req = PipRequirement(line)
                (spec, ) = req.specifier
                assert spec.operator == '==', line
                pins[req.name] = spec.version
    return pins


def setup_sh_mmcv_version():
    with open(osp.join(REPO, 'scripts', 'setup.sh')) as f:
        (version, ) = re.findall(r'^MMCV_VERSION=(\S+)$', f.read(), re.M)
    return version


def test_setup_sh_pins_lie_inside_the_ranges():
    pins = dict(read_pins('pinned.txt'), **read_pins('torch.txt'),
                mmcv=setup_sh_mmcv_version())
    for req in REQUIREMENTS:
        assert req.name in pins, f'setup.sh installs no pinned {req.name}'
        assert pins[req.name] in SpecifierSet(req.specifier), (
            f'{req.name}=={pins[req.name]} is outside {req}')


def test_no_requirement_file_repeats_a_range():
    ranged = set(BY_NAME)
    for name in os.listdir(osp.join(REPO, 'requirements')):
        if name in ('pinned.txt', 'torch.txt'):
            continue
        with open(osp.join(REPO, 'requirements', name)) as f:
            for line in f:
                line = line.split('#', 1)[0].strip()
                if line and not line.startswith('-'):
                    assert PipRequirement(line).name not in ranged, (
                        f'requirements/{name}: {line} (the range belongs in '
                        'mmtranscnn/utils/versions.py)')


# -- the deploy extra ---------------------------------------------------------
DEPLOY_BY_NAME = {req.name: req for req in versions.DEPLOY_REQUIREMENTS}
# Inside the deploy ranges, none of them setup.sh's pins.
DEPLOY_IN_RANGE = {'mmdeploy': '1.3.2', 'onnx': '1.17.1',
                   'onnxruntime': '1.20.1'}


def test_deploy_extra_ranges():
    assert set(DEPLOY_BY_NAME) == {'mmdeploy', 'onnx', 'onnxruntime',
                                   'onnxscript'}
    for req in versions.DEPLOY_REQUIREMENTS:
        ops = {spec.operator for spec in SpecifierSet(req.specifier)}
        assert ops == {'>=', '<'} and req.why and req.extra == 'deploy', req
    assert versions.requirement_strings('deploy') == [
        str(req) for req in versions.DEPLOY_REQUIREMENTS]


def test_setup_sh_pins_the_deploy_extra_inside_its_ranges():
    pins = read_pins('pinned.txt')
    for req in versions.DEPLOY_REQUIREMENTS:
        assert pins[req.name] in SpecifierSet(req.specifier), req


def test_installed_deploy_packages_agree_with_each_other():
    """What mmdeploy, onnx and onnxruntime declare (mmdeploy 1.3.1:
    protobuf<=3.20.2) is what is installed: the ranges resolve."""
    from packaging.version import Version
    unmet = []
    for name in DEPLOY_BY_NAME:
        for line in metadata.requires(name) or []:
            req = PipRequirement(line)
            if req.marker is not None and not req.marker.evaluate(
                    {'extra': ''}):
                continue
            installed = metadata.version(req.name)
            if not req.specifier.contains(Version(installed),
                                          prereleases=True):
                unmet.append(f'{name} needs {req}, {installed} installed')
    assert not unmet, unmet


def test_deploy_check_names_missing_and_out_of_range_packages(monkeypatch):
    fake_metadata(monkeypatch, dict(IN_RANGE, **DEPLOY_IN_RANGE))
    versions.check_deploy_versions()
    installed = dict(IN_RANGE, **dict(DEPLOY_IN_RANGE, onnx='1.18.0'))
    del installed['mmdeploy']
    fake_metadata(monkeypatch, installed)
    monkeypatch.setattr(versions, '_importable', lambda module: False)
    message = str(pytest.raises(IncompatibleVersionError,
                                versions.check_deploy_versions).value)
    assert message.startswith('export to ONNX Runtime')
    assert ('mmdeploy is not installed; mmtranscnn needs '
            f"{DEPLOY_BY_NAME['mmdeploy']} (pip install "
            "'mmtranscnn[deploy]')") in message
    assert f"onnx 1.18.0 is installed; mmtranscnn needs " \
        f"{DEPLOY_BY_NAME['onnx']}" in message


def test_import_check_ignores_the_deploy_packages(monkeypatch):
    """import mmtranscnn imports none of them, so their versions do not
    stop it."""
    fake_metadata(monkeypatch, dict(IN_RANGE, onnx='1.18.0'))
    monkeypatch.setattr(versions, '_importable', lambda module: False)
    assert version_problems() == []
