"""The released files' links: one source, agreed on everywhere, with a
fallback that is tried after a 404 and an error that says what to do.

- ``presets.RELEASED`` holds each file's links, the authors' last
  published one first (``v1.0`` for the first version, ``v2.0`` for
  HAT-Net), and their Google Drive copy; every link ends in the file name;
- configs, ``model-index.yml``, README and docs name exactly the first
  link of the preset they use (and no other link of the authors');
- against a server on 127.0.0.1 that has only the fallback: the backbone's
  ``init_cfg`` downloads it after the first link's 404, once, into
  torch.hub's cache (``TORCH_HOME`` is a temporary folder) under the file's
  name;
- with nothing served: the error lists every link tried and why, the
  Google Drive copy, the cache path and the config key for a local copy;
  a failure other than 404 stops at the first link; a URL that is not a
  released link has no fallback.
"""
import argparse
import glob
import io
import json
import os.path as osp
import re
from urllib.parse import urlparse

import pytest
import torch
import yaml
from mmengine.config import Config

import mmtranscnn  # noqa: F401  (registers the models)
from mmtranscnn.models import TransCNN, presets
from mmtranscnn.models.pretrained import (CONFIG_KEY,
                                          CheckpointDownloadError,
                                          read_checkpoint, released_preset)
from mmtranscnn.models.released import RELEASED, convert_released

from local_server import LocalServer
from released_reference import compact_state_dict

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    LAYOUTS = json.load(f)

FIRST_LINKS = {info.url: preset for preset, info in RELEASED.items()}
ALL_LINKS = {u for info in RELEASED.values() for u in info.urls}
AUTHORS_LINK = re.compile(r'https?://github\.com/yun-liu/[\w./-]+')
DRIVE_LINK = re.compile(r'https?://drive\.google\.com/[\w./?=&-]+')
PAGES = [osp.join(REPO, 'README.md')] + sorted(
    glob.glob(osp.join(REPO, 'docs', '**', '*.md'), recursive=True))


# -- one source ---------------------------------------------------------------
@pytest.mark.parametrize('preset', sorted(RELEASED))
def test_links_last_published_first_all_ending_in_the_file(preset):
    info = RELEASED[preset]
    assert info.url == info.urls[0]
    if info.version == 'transcnn-v1':
        assert info.urls == (
            'https://github.com/yun-liu/TransCNN/releases/download/v1.0/'
            + info.file,
            'https://github.com/yun-liu/TransCNN/releases/download/v1/'
            + info.file,
            'https://github.com/yun-liu/HAT-Net/releases/download/v1.0/'
            + info.file)
    else:
        assert info.urls == (
            'https://github.com/yun-liu/HAT-Net/releases/download/v2.0/'
            + info.file, )
    # One cache file (torch.hub names it after the link) whichever link
    # delivered it.
    assert {osp.basename(urlparse(u).path) for u in info.urls} == {info.file}
    assert all(released_preset(u) == preset for u in info.urls)
    assert re.fullmatch(r'https://drive\.google\.com/file/d/[\w-]{33}/'
                        r'view\?usp=sharing', info.drive_url)


def test_every_file_has_its_own_drive_copy():
    drive = [info.drive_url for info in RELEASED.values()]
    assert len(set(drive)) == len(drive) == 8


# -- everything else agrees with it -------------------------------------------
def _walk(node, found):
    """Every dict in a config (depth first) into ``found``; returns the
    strings met on the way."""
    strings = []
    if isinstance(node, dict):
        found.append(node)
        values = node.values()
    elif isinstance(node, (list, tuple)):
        values = node
    else:
        return [node] if isinstance(node, str) else []
    for value in values:
        strings += _walk(value, found)
    return strings


def test_configs_name_the_first_link_of_their_preset():
    """Every config that spells out an authors' link (the backbone pieces in
    configs/_base_/models/; the others inherit them) names the first link
    of the preset its backbone builds."""
    spelled = [p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                                    recursive=True)
               if 'github.com/yun-liu' in open(p).read()]
    assert len(spelled) >= 3, spelled  # transcnn-v1-tiny/-small, hatnet
    for path in spelled:
        dicts = []
        cfg = Config.fromfile(path)
        strings = _walk(cfg.to_dict(), dicts)
        links = [s for s in strings if 'github.com/yun-liu' in s]
        assert links and all(s in FIRST_LINKS for s in links), (path, links)
        backbones = [d for d in dicts if d.get('arch') in RELEASED
                     and isinstance(d.get('init_cfg'), dict)]
        assert backbones, path
        for backbone in backbones:
            assert backbone['init_cfg']['checkpoint'] == \
                RELEASED[backbone['arch']].url, path


def model_index():
    """model-index.yml's entries and those of the files it imports (the
    released classifiers are in configs/released/imagenet/metafile.yml);
    returns (entries by name, the text of every file)."""
    with open(osp.join(REPO, 'model-index.yml')) as f:
        text = f.read()
    index = yaml.safe_load(text)
    models, texts = list(index.get('Models', [])), [text]
    for imported in index.get('Import', []):
        with open(osp.join(REPO, imported)) as f:
            texts.append(f.read())
        models += yaml.safe_load(texts[-1]).get('Models', [])
    names = [m['Name'] for m in models]
    assert len(set(names)) == len(names), names
    return {m['Name']: m for m in models}, texts


def test_model_index_names_the_first_links():
    models, texts = model_index()
    for text in texts:
        assert set(AUTHORS_LINK.findall(text)) <= set(FIRST_LINKS)
    for preset, info in RELEASED.items():
        name = f'{preset}_in1k-{info.input_size}px'
        assert models[name]['Weights'] == info.url, name
        assert models[name]['Config'] == \
            f'configs/released/imagenet/{name}.py'
    for name, model in models.items():
        meta = model.get('Metadata', {})
        if 'Backbone weights' in meta:
            assert meta['Backbone weights'] == \
                RELEASED[meta['Backbone']].url, name


@pytest.mark.parametrize('page', PAGES,
                         ids=lambda p: osp.relpath(p, REPO))
def test_pages_name_the_first_links_and_the_drive_copies(page):
    with open(page) as f:
        text = f.read()
    links = AUTHORS_LINK.findall(text)
    assert set(links) <= set(FIRST_LINKS), sorted(set(links) - ALL_LINKS)
    drive = {info.drive_url for info in RELEASED.values()}
    assert set(DRIVE_LINK.findall(text)) <= drive
    if page == PAGES[0]:  # README's model zoo links every file
        assert set(FIRST_LINKS) <= set(links)


# -- downloads against a local server -----------------------------------------
def _authors_file(preset):
    """A released-layout file of ``preset`` as the authors' training script
    saves it, as bytes; and its state dict."""
    state_dict = compact_state_dict(LAYOUTS[preset]['state_dict'])
    buffer = io.BytesIO()
    torch.save({'model': state_dict,
                'args': argparse.Namespace(model='TransCNN')}, buffer)
    return buffer.getvalue(), state_dict


PRESET = 'transcnn-v1-tiny'
FILE = RELEASED[PRESET].file
# The three links' paths on the local server, in the order of the real ones.
PATHS = [f'/TransCNN/v1.0/{FILE}', f'/TransCNN/v1/{FILE}',
         f'/HAT-Net/v1.0/{FILE}']


@pytest.fixture
def local_links(monkeypatch, tmp_path):
    """``RELEASED[PRESET]``'s links pointed at a server on 127.0.0.1 (built
    by the test with ``LocalServer``); TORCH_HOME in ``tmp_path``.
    Returns a function server -> the cache path."""
    torch_home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(torch_home))
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(name, '127.0.0.1')

    def point_at(server):
        info = RELEASED[PRESET]
        monkeypatch.setitem(presets.RELEASED, PRESET, info._replace(
            urls=tuple(server.url(p) for p in PATHS)))
        return str(torch_home / 'hub' / 'checkpoints' / FILE)

    return point_at


def _backbone():
    return TransCNN(arch=PRESET, init_cfg=dict(
        type='Pretrained', checkpoint=RELEASED[PRESET].url, prefix=None))


def test_fallback_link_is_downloaded_after_a_404(local_links):
    content, state_dict = _authors_file(PRESET)
    with LocalServer(files={PATHS[1]: content}) as server:
        where = local_links(server)
        backbone = _backbone()
        backbone.init_weights()
        assert server.requests == PATHS[:2]  # 404, then the fallback
        assert osp.isfile(where)
        _backbone().init_weights()  # from the cache now
        assert server.requests == PATHS[:2]
    expected, _head, _ = convert_released(state_dict)
    loaded = backbone.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_every_link_404_says_what_was_tried_and_what_to_do(local_links):
    with LocalServer() as server:
        where = local_links(server)
        links = RELEASED[PRESET].urls
        with pytest.raises(CheckpointDownloadError) as error:
            _backbone().init_weights()
        assert server.requests == PATHS  # each link once, in order
    assert error.value.tried == list(links)
    assert error.value.url == links[0]
    message = str(error.value)
    positions = [message.index(link) for link in links]
    assert positions == sorted(positions), message
    assert message.count('404') >= 3
    assert RELEASED[PRESET].drive_url in message
    assert where in message
    assert f'--cfg-options {CONFIG_KEY}=' in message
    assert not osp.exists(where)


def test_a_failure_other_than_404_stops_at_the_first_link(local_links):
    """503 (or a refused connection) would repeat at the other links of the
    same host: the later links are not asked."""
    content, _ = _authors_file(PRESET)
    with LocalServer(files={PATHS[1]: content},
                     status={PATHS[0]: 503}) as server:
        where = local_links(server)
        with pytest.raises(CheckpointDownloadError) as error:
            read_checkpoint(RELEASED[PRESET].url)
        assert server.requests == PATHS[:1]
    message = str(error.value)
    assert '503' in message and RELEASED[PRESET].url in message
    assert error.value.tried == [RELEASED[PRESET].url]
    assert RELEASED[PRESET].drive_url in message and where in message
    assert not osp.exists(where)


def test_a_link_of_no_release_has_no_fallback(local_links, tmp_path):
    with LocalServer() as server:
        local_links(server)
        url = server.url('/elsewhere/backbone.pth')
        assert released_preset(url) is None
        with pytest.raises(CheckpointDownloadError) as error:
            read_checkpoint(url)
        assert server.requests == ['/elsewhere/backbone.pth']
    assert error.value.tried == [url]
    message = str(error.value)
    assert 'Google Drive' not in message
    assert str(tmp_path / 'torch_home' / 'hub' / 'checkpoints' /
               'backbone.pth') in message


def test_a_later_link_named_in_a_config_falls_back_to_the_others(
        local_links):
    """A config that names the older ``v1`` link still gets the file when
    only ``v1.0`` is served: the file's other links follow in order."""
    content, state_dict = _authors_file(PRESET)
    with LocalServer(files={PATHS[0]: content}) as server:
        where = local_links(server)
        older = RELEASED[PRESET].urls[1]
        loaded = read_checkpoint(older)
        assert server.requests == [PATHS[1], PATHS[0]]
    assert osp.isfile(where)
    assert set(loaded['model']) == set(state_dict)
    assert isinstance(loaded['args'], argparse.Namespace)


def test_a_download_that_breaks_off_is_a_download_error(local_links,
                                                        monkeypatch):
    """A connection reset mid-file (no URLError) is reported as a failed
    download, not as a bad cached file: nothing was cached."""
    calls = []

    def reset(url, dst, *args, **kwargs):
        calls.append(url)
        raise ConnectionResetError(104, 'Connection reset by peer')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', reset)
    with LocalServer() as server:
        where = local_links(server)
        with pytest.raises(CheckpointDownloadError) as error:
            read_checkpoint(RELEASED[PRESET].url)
    assert calls == [RELEASED[PRESET].url]  # not a 404: no fallback
    message = str(error.value)
    assert 'Connection reset by peer' in message and where in message
    assert 'delete' not in message
    assert not osp.exists(where)
