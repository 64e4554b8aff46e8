"""mmpretrain's model hub knows the authors' eight released classifiers.

After ``import mmtranscnn``:

- ``list_models('*transcnn*')`` lists the four first-version classifiers,
  ``list_models('*hatnet*')`` the four HAT-Net ones, under the names of
  their configs and ``model-index.yml`` entries (weights: the first link);
  the image-classification inferencer lists them too;
- ``get_model(name, pretrained=True)`` builds the classifier and loads the
  authors' file converted on load: every backbone and head tensor equals
  the converter's, from a file in torch.hub's cache (nothing downloaded),
  and from a server on 127.0.0.1 through the fallback link;
- ``ImageClassificationInferencer(name)`` runs on an image;
- mmengine's checkpoint loader reads the released links converted (with
  and without our tools' process-wide allow-list) and every other URL as
  it is, and a cached file of another model stops with the URL and the
  cache path.

Files are random tensors with the released key layout (a few MB); TORCH_HOME
is a temporary folder; downloads go through ``torch.hub`` functions
replaced here or to a server on 127.0.0.1: nothing reaches the internet.
Only public calls of mmengine and mmpretrain are used.
"""
import argparse
import io
import json
import os.path as osp
import pickle
import re
import subprocess
import sys
from pathlib import Path
from urllib.error import HTTPError, URLError

import mmpretrain
import numpy as np
import pytest
import torch
import yaml
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.apis.model import ModelHub

import mmtranscnn  # noqa: F401  (registers the models and the hub entries)
from mmtranscnn.models import presets
from mmtranscnn.models.pretrained import CheckpointDownloadError
from mmtranscnn.models.released import RELEASED, convert_released
from mmtranscnn.utils import allow_checkpoint_globals

from local_server import LocalServer
from malicious import CodeOnLoad
from released_reference import compact_state_dict

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    LAYOUTS = json.load(f)


def hub_name(preset):
    """The model hub's name of a released classifier (that of its config
    and of its entry in configs/released/imagenet/metafile.yml)."""
    return f'{preset}_in1k-{RELEASED[preset].input_size}px'


V1 = sorted(hub_name(p) for p, i in RELEASED.items()
            if i.version == 'transcnn-v1')
HATNET = sorted(hub_name(p) for p, i in RELEASED.items()
                if i.version == 'hatnet')
TINY = 'hatnet-tiny'


def authors_file(preset, seed=0, args=True):
    """(bytes of a file as the authors' training script saves it, its
    state dict): random tensors in the released layout of ``preset``;
    with ``args`` the script's ``argparse.Namespace`` too."""
    state_dict = compact_state_dict(LAYOUTS[preset]['state_dict'], seed)
    content = {'model': state_dict}
    if args:
        content['args'] = argparse.Namespace(model=preset)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue(), state_dict


def expected_classifier(state_dict):
    backbone, head, _ = convert_released(state_dict)
    return {**{'backbone.' + k: v for k, v in backbone.items()},
            **{'head.' + k: v for k, v in head.items()}}


def assert_converted(loaded, state_dict):
    """``loaded`` (a classifier's state dict) holds exactly the converted
    file's tensors."""
    expected = expected_classifier(state_dict)
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def assert_loaded(model, state_dict):
    """Every tensor of the classifier's backbone and head is the converted
    file's (and the file has nothing the classifier lacks)."""
    assert_converted({k: v for k, v in model.state_dict().items()
                      if k.startswith(('backbone.', 'head.'))}, state_dict)


class TorchHome(type(Path())):
    """A TORCH_HOME folder with the list of downloads tried."""
    downloads: list


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """TORCH_HOME in a temporary folder; downloads fail as without network
    and are recorded (``torch_home.downloads``)."""
    home = TorchHome(tmp_path / 'torch_home')
    monkeypatch.setenv('TORCH_HOME', str(home))
    downloads = []

    def unreachable(url, dst, *args, **kwargs):
        downloads.append(url)
        raise URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', unreachable)
    home.downloads = downloads
    return home


@pytest.fixture
def own_allow_list():
    """Torch's ``weights_only`` allow-list restored after the test."""
    allowed = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(allowed)


def put_in_cache(home, name, content):
    path = home / 'hub' / 'checkpoints' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


# -- the names ----------------------------------------------------------------
def test_list_models_knows_the_eight():
    assert sorted(mmpretrain.list_models('*transcnn*')) == V1
    assert sorted(mmpretrain.list_models('*hatnet*')) == HATNET
    assert len(set(V1 + HATNET)) == 8
    inferencer = mmpretrain.ImageClassificationInferencer
    assert sorted(inferencer.list_models('*hatnet*')) == HATNET


IMPORT_GLUE = r'''
import json
import os.path as osp

from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.apis.model import ModelHub

# Record the public registration calls that importing mmtranscnn makes.
calls = dict(schemes=[], indexes=[])
register_scheme = CheckpointLoader.register_scheme.__func__
register_model_index = ModelHub.register_model_index.__func__


def record_scheme(cls, prefixes, loader=None, force=False):
    calls['schemes'].append(dict(prefixes=prefixes, force=force,
                                 loader=getattr(loader, '__name__', None)))
    return register_scheme(cls, prefixes, loader, force)


def record_index(cls, file, config_prefix=None):
    calls['indexes'].append(osp.abspath(file))
    return register_model_index(cls, file, config_prefix)


CheckpointLoader.register_scheme = classmethod(record_scheme)
ModelHub.register_model_index = classmethod(record_index)
import mmtranscnn  # noqa: F401
on_import = json.loads(json.dumps(calls))
import mmpretrain
on_import['names'] = sorted(mmpretrain.list_models('*transcnn*') +
                            mmpretrain.list_models('*hatnet*'))
print(json.dumps(on_import))
'''


def test_import_registers_the_loader_and_the_entries_only():
    """In a fresh interpreter, ``import mmtranscnn`` registers one loader
    for exactly the released links and one model index, ours (mmpretrain
    parses its own index only when a hub function first runs); the hub
    then lists the eight."""
    out = subprocess.run([sys.executable, '-c', IMPORT_GLUE], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    calls = json.loads(out.stdout.strip().splitlines()[-1])
    assert calls['indexes'] == [osp.join(REPO, 'configs', 'released',
                                         'imagenet', 'metafile.yml')]
    (scheme, ) = calls['schemes']
    assert scheme['loader'] == 'load_from_released'
    patterns = scheme['prefixes']
    links = [u for info in RELEASED.values() for u in info.urls]
    assert len(patterns) == len(links)
    # CheckpointLoader picks a loader with re.match: each link is matched
    # by a pattern, nothing else is (another file of the release, a longer
    # name, another host).
    for link in links:
        assert any(re.match(p, link) for p in patterns), link
    folder = RELEASED[TINY].url.rsplit('/', 1)[0]
    for other in (folder + '/another.pth', RELEASED[TINY].url + '.bak',
                  'https://example.org/' + RELEASED[TINY].file,
                  RELEASED[TINY].file):
        assert not any(re.match(p, other) for p in patterns), other
    assert calls['names'] == sorted(V1 + HATNET)


def model_index():
    """model-index.yml's entries and those of the files it imports."""
    with open(osp.join(REPO, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    models = list(index.get('Models', []))
    for imported in index.get('Import', []):
        with open(osp.join(REPO, imported)) as f:
            models += yaml.safe_load(f).get('Models', [])
    return {m['Name']: m for m in models}


def test_hub_entries_agree_with_model_index_and_the_configs():
    index = model_index()
    for preset, info in RELEASED.items():
        name = hub_name(preset)
        entry = ModelHub.get(name)
        assert osp.samefile(entry.config.filename,
                            osp.join(REPO, index[name]['Config']))
        assert entry.weights == info.url == index[name]['Weights']
        assert [r.task for r in entry.results] == ['Image Classification']
        assert entry.config.model.backbone.arch == preset
        assert entry.config.model.head.num_classes == 1000


# -- mmengine's loader --------------------------------------------------------
def test_the_loader_answers_for_the_released_links_only(torch_home):
    """Each link of each released file loads converted through mmengine's
    ``CheckpointLoader`` (from the cache); other URLs reach mmengine's own
    http loader, which downloads them as they are."""
    for seed, (preset, info) in enumerate(RELEASED.items()):
        content, state_dict = authors_file(preset, seed)
        put_in_cache(torch_home, info.file, content)
        for url in info.urls:
            loaded = CheckpointLoader.load_checkpoint(url)
            assert loaded['meta']['released_as'] == info.name, url
            assert_converted(loaded['state_dict'], state_dict)
    assert torch_home.downloads == []
    folder = RELEASED[TINY].url.rsplit('/', 1)[0]
    for other in (folder + '/another.pth', RELEASED[TINY].url + '.bak'):
        # mmengine's http loader: the download's own error, not ours.
        with pytest.raises(URLError):
            CheckpointLoader.load_checkpoint(other)
        assert torch_home.downloads[-1] == other
    # The same file name on another host is read as it is, not converted.
    _, state_dict = authors_file(TINY)
    other = 'https://example.org/' + RELEASED[TINY].file
    put_in_cache(torch_home, RELEASED[TINY].file,
                 authors_file(TINY, args=False)[0])
    tried = len(torch_home.downloads)
    loaded = CheckpointLoader.load_checkpoint(other)
    assert set(loaded) == {'model'}
    assert set(loaded['model']) == set(state_dict)
    assert len(torch_home.downloads) == tried  # the cached file


# -- get_model(pretrained=True) -----------------------------------------------
def test_get_model_loads_the_cached_file_converted(torch_home):
    content, state_dict = authors_file(TINY)
    put_in_cache(torch_home, RELEASED[TINY].file, content)
    model = mmpretrain.get_model(hub_name(TINY), pretrained=True)
    assert torch_home.downloads == []
    assert type(model.backbone).__name__ == 'TransCNN'
    assert model._config.model.backbone.arch == TINY
    assert_loaded(model, state_dict)


def test_get_model_downloads_through_the_fallback(tmp_path, monkeypatch):
    """The first version's file served only at an older link: get_model
    asks the first link (the hub entry's weights), gets 404, downloads a
    fallback link from a server on 127.0.0.1 into the cache and loads it
    converted."""
    preset = 'transcnn-v1-tiny'
    torch_home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(torch_home))
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(name, '127.0.0.1')
    content, state_dict = authors_file(preset, seed=1)
    file = RELEASED[preset].file
    paths = [f'/v1/{file}', f'/HAT-Net/v1.0/{file}']
    first = RELEASED[preset].url
    asked = []
    download = torch.hub.download_url_to_file

    def first_link_gone(url, dst, *args, **kwargs):
        asked.append(url)
        if url == first:  # the release page of the first link is gone
            raise HTTPError(url, 404, 'Not Found', None, None)
        return download(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', first_link_gone)
    with LocalServer(files={paths[0]: content}) as server:
        fallbacks = tuple(server.url(p) for p in paths)
        monkeypatch.setitem(presets.RELEASED, preset,
                            RELEASED[preset]._replace(
                                urls=(first, ) + fallbacks))
        model = mmpretrain.get_model(hub_name(preset), pretrained=True)
        assert server.requests == paths[:1]
    assert asked == [first, fallbacks[0]]
    assert (torch_home / 'hub' / 'checkpoints' / file).is_file()
    assert model._config.model.backbone.arch == preset
    assert_loaded(model, state_dict)


@pytest.mark.parametrize('process_wide', [False, True],
                         ids=['scoped', 'tools-allow-list'])
def test_the_link_loads_through_mmengine_load_checkpoint(
        process_wide, torch_home, own_allow_list):
    """mmengine's own load_checkpoint (what a run's ``load_from`` calls)
    loads the link converted, in any process and in our tools' (which add
    mmengine's globals to torch's allow-list for the whole process)."""
    from mmengine.runner import load_checkpoint
    if process_wide:
        allow_checkpoint_globals()
    content, state_dict = authors_file(TINY, seed=2)
    put_in_cache(torch_home, RELEASED[TINY].file, content)
    model = mmpretrain.get_model(hub_name(TINY))  # random weights
    load_checkpoint(model, RELEASED[TINY].url, map_location='cpu',
                    strict=True)
    assert_loaded(model, state_dict)
    assert torch_home.downloads == []


def test_a_cached_file_of_another_model_says_what_to_do(torch_home):
    content, _ = authors_file('transcnn-v1-tiny')
    # under HAT-Net's name
    where = put_in_cache(torch_home, RELEASED[TINY].file, content)
    with pytest.raises(ValueError) as error:
        mmpretrain.get_model(hub_name(TINY), pretrained=True)
    message = str(error.value)
    assert RELEASED[TINY].url in message and where in message
    assert 'HAT-Net-Tiny' in message and 'transcnn-v1-tiny' in message
    assert 'delete' in message
    assert torch_home.downloads == []


def test_a_link_that_is_not_served_says_what_to_do(torch_home):
    with pytest.raises(CheckpointDownloadError) as error:
        mmpretrain.get_model(hub_name(TINY), pretrained=True)
    message = str(error.value)
    assert RELEASED[TINY].url in message and 'name resolution' in message
    assert RELEASED[TINY].drive_url in message
    assert torch_home.downloads == [RELEASED[TINY].url]


# -- the inferencer -----------------------------------------------------------
def test_image_classification_inferencer_runs(torch_home):
    from mmengine.registry import DefaultScope
    content, state_dict = authors_file(TINY)
    put_in_cache(torch_home, RELEASED[TINY].file, content)
    image = np.random.default_rng(0).integers(
        0, 256, (180, 240, 3), dtype=np.uint8)
    # mmpretrain's scope, as in a fresh process (tests before this one may
    # have left another codebase's scope current in this one).
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = mmpretrain.ImageClassificationInferencer(
            hub_name(TINY))
        (result, ) = inferencer(image)
    assert torch_home.downloads == []
    assert_loaded(inferencer.model, state_dict)
    scores = np.asarray(result['pred_scores'])
    assert scores.shape == (1000, ) and np.isfinite(scores).all()
    assert result['pred_label'] == int(scores.argmax())
    assert isinstance(result['pred_class'], str) and result['pred_class']


def test_get_model_refuses_a_malicious_released_file(torch_home, tmp_path):
    """A file at a released link that pickles code (the cached copy here):
    get_model(pretrained=True) stops, naming the file, and runs nothing."""
    marker = tmp_path / 'pwned'
    buffer = io.BytesIO()
    torch.save({'model': authors_file(TINY)[1],
                'args': CodeOnLoad(str(marker))}, buffer)
    path = put_in_cache(torch_home, RELEASED[TINY].file, buffer.getvalue())
    with pytest.raises(RuntimeError, match='does not load') as info:
        mmpretrain.get_model(hub_name(TINY), pretrained=True)
    assert path in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()
