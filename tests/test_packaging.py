"""Packaging: the mim layout in wheels, sdists and editable installs, an
install into an environment that already holds a supported stack, LICENSE
and CITATION.cff.

The sdist and the wheel are built once per session (``built_dists`` in
conftest.py).
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser

import pytest
from packaging.requirements import Requirement

import mmtranscnn
from test_versions import declared_requirements

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MIM_FILES = ('configs/retinanet_transcnn_base.py',
             'configs/imagenet/transcnn-base_8xb128_in1k.py',
             'tools/train.py', 'tools/dist_train.sh', 'model-index.yml')


def test_editable_install_links_mim_files():
    """`pip install -e .` (what scripts/setup.sh does) links, not copies."""
    mim_dir = osp.join(osp.dirname(mmtranscnn.__file__), '.mim')
    for rel in MIM_FILES:
        path = osp.join(mim_dir, rel)
        assert osp.isfile(path), path
        assert osp.realpath(path) == osp.realpath(osp.join(REPO, rel))


@pytest.mark.slow
def test_sdist_and_wheel_carry_mim_files(built_dists):
    with tarfile.open(built_dists.sdist) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    for rel in MIM_FILES + ('requirements/pinned.txt', 'README.md',
                            'LICENSE', 'CITATION.cff'):
        assert rel in names, rel

    with zipfile.ZipFile(built_dists.wheel) as zf:
        names = set(zf.namelist())
    for rel in MIM_FILES:
        assert f'mmtranscnn/.mim/{rel}' in names, rel
    assert 'mmtranscnn/models/hmhsa.py' in names
    assert 'mmtranscnn/utils/versions.py' in names
    assert any(n.endswith('.dist-info/licenses/LICENSE') or
               n.endswith('.dist-info/LICENSE') for n in names)
    assert not any(n.startswith(('tests/', 'configs/')) for n in names)


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (name, ) = [n for n in zf.namelist()
                    if n.endswith('.dist-info/METADATA')]
        return Parser().parsestr(zf.read(name).decode())


@pytest.mark.slow
def test_wheel_requires_the_ranges_of_setup_py(built_dists):
    """The wheel declares setup.py's ranges: install_requires without a
    marker, each extra under its own; no exact pin reaches a user."""
    requires = [Requirement(line) for line in
                wheel_metadata(built_dists.wheel).get_all('Requires-Dist')]
    install_requires, extras = declared_requirements()

    def by_name(reqs):
        return {r.name: r.specifier for r in reqs}

    assert by_name(r for r in requires if r.marker is None) == \
        by_name(install_requires)
    for extra, reqs in extras.items():
        assert by_name(r for r in requires if r.marker and
                       r.marker.evaluate({'extra': extra})) == \
            by_name(reqs), extra
    assert not any(spec.operator == '==' for r in requires
                   for spec in r.specifier), requires


# -- installing into an environment that already has a supported stack --------
# setup.sh installs mmengine 0.10.7 and torch 2.14.1; this environment holds
# other versions inside the ranges. (mmcv has one release in its range.)
USER_ENV = {'torch': '2.6.0', 'mmcv': '2.1.0', 'mmengine': '0.10.4',
            'numpy': '1.26.4', 'packaging': '23.2'}
# What an index would offer: setup.sh's versions.
OFFERED = {'torch': '2.14.1', 'mmcv': '2.1.0', 'mmengine': '0.10.7'}


def make_venv(root, installed):
    """An empty venv whose site-packages holds metadata of ``installed``."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip',
                    str(root)], check=True, timeout=120)
    (site, ) = glob.glob(str(root / 'lib' / 'python*' / 'site-packages'))
    for name, version in installed.items():
        dist_info = osp.join(site, f'{name}-{version}.dist-info')
        os.makedirs(dist_info)
        for file, text in (('METADATA', f'Metadata-Version: 2.1\nName: '
                            f'{name}\nVersion: {version}\n'),
                           ('INSTALLER', 'pip\n'), ('RECORD', '')):
            with open(osp.join(dist_info, file), 'w') as f:
                f.write(text)
    return str(root / 'bin' / 'python')


def make_fake_wheels(directory, offered):
    """Metadata-only wheels a --find-links folder offers in place of PyPI."""
    os.makedirs(directory)
    for name, version in offered.items():
        dist = f'{name}-{version}'
        with zipfile.ZipFile(osp.join(directory, f'{dist}-py3-none-any.whl'),
                             'w') as zf:
            zf.writestr(f'{dist}.dist-info/METADATA',
                        f'Metadata-Version: 2.1\nName: {name}\n'
                        f'Version: {version}\n')
            zf.writestr(f'{dist}.dist-info/WHEEL',
                        'Wheel-Version: 1.0\nRoot-Is-Purelib: true\n'
                        'Tag: py3-none-any\n')
            zf.writestr(f'{dist}.dist-info/RECORD', '')
    return directory


def pip_dry_run(target_python, wheel, find_links, report):
    """What ``pip install <wheel>`` would do to the target environment.

    The test environment's pip drives the target interpreter (``--python``)
    with this machine's pip configuration switched off (it adds local
    indexes and constraints) and only ``find_links`` to choose from.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1')
    return subprocess.run(
        [sys.executable, '-m', 'pip', '--python', target_python, 'install',
         '--dry-run', '--no-index', '--find-links', find_links,
         '--report', report, wheel],
        env=env, capture_output=True, text=True, timeout=300)


def would_install(report):
    with open(report) as f:
        return {item['metadata']['name']: item['metadata']['version']
                for item in json.load(f)['install']}


@pytest.mark.slow
def test_install_leaves_a_supported_stack_as_it_is(built_dists, tmp_path):
    python = make_venv(tmp_path / 'venv', USER_ENV)
    links = make_fake_wheels(str(tmp_path / 'index'), OFFERED)
    report = str(tmp_path / 'report.json')
    proc = pip_dry_run(python, built_dists.wheel, links, report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert would_install(report) == {'mmtranscnn': mmtranscnn.__version__}


@pytest.mark.slow
@pytest.mark.parametrize('name,version', [('mmengine', '1.0.0'),
                                          ('mmengine', '0.10.2'),
                                          ('torch', '2.5.1')])
def test_install_replaces_an_out_of_range_version(built_dists, tmp_path,
                                                  name, version):
    """pip enforces the ranges: it would replace the version outside, and
    fails when nothing inside is on offer."""
    python = make_venv(tmp_path / 'venv', dict(USER_ENV, **{name: version}))
    report = str(tmp_path / 'report.json')
    links = make_fake_wheels(str(tmp_path / 'index'), OFFERED)
    proc = pip_dry_run(python, built_dists.wheel, links, report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert would_install(report) == {'mmtranscnn': mmtranscnn.__version__,
                                     name: OFFERED[name]}

    others = {k: v for k, v in OFFERED.items() if k != name}
    links = make_fake_wheels(str(tmp_path / 'index-without'), others)
    proc = pip_dry_run(python, built_dists.wheel, links, report)
    assert proc.returncode != 0
    assert f'No matching distribution found for {name}' in proc.stderr, \
        proc.stderr[-3000:]


# -- LICENSE and CITATION.cff --------------------------------------------------
def test_license_is_the_apache_2_text():
    with open(osp.join(REPO, 'LICENSE')) as f:
        text = f.read()
    assert text.startswith('Copyright ')
    for words in ('Apache License', 'Version 2.0, January 2004',
                  'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND '
                  'DISTRIBUTION', 'END OF TERMS AND CONDITIONS'):
        assert words in text, words


def test_citation_cff_names_the_paper_and_the_software():
    """CITATION.cff (CFF 1.2.0): the keys the format requires, the paper as
    preferred-citation."""
    import yaml
    with open(osp.join(REPO, 'CITATION.cff')) as f:
        cff = yaml.safe_load(f)
    assert cff['cff-version'] == '1.2.0'
    for key in ('message', 'title', 'authors'):
        assert cff[key], key
    assert cff['license'] == 'Apache-2.0'
    assert str(cff['version']) == mmtranscnn.__version__
    paper = cff['preferred-citation']
    assert paper['type'] == 'article'
    assert paper['title'] == 'Transformer in Convolutional Neural Networks'
    assert [a['family-names'] for a in paper['authors']] == [
        'Liu', 'Sun', 'Qiu', 'Zhang', 'Chhatkuli', 'Van Gool']
    assert all(a['given-names'] for a in paper['authors'])
    assert paper['year'] == 2021
    assert '2106.03180' in paper['url'] and '2106.03180' in paper['doi']
