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
- the checkpoint loader answers for the released links only, and a cached
  file of another model stops with the URL and the cache path.

Files are random tensors with the released key layout (a few MB); TORCH_HOME
is a temporary folder; nothing reaches the internet.
"""
import argparse
import io
import json
import os.path as osp
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from urllib.error import URLError

import mmpretrain
import numpy as np
import pytest
import torch
import yaml
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.apis.model import ModelHub

import mmtranscnn  # noqa: F401  (registers the models and the hub entries)
from mmtranscnn.models import checkpoint_cache, presets, pretrain_hub
from mmtranscnn.models.checkpoint_cache import CheckpointFileError
from mmtranscnn.models.pretrain_hub import hub_name, load_from_released
from mmtranscnn.models.released import RELEASED, convert_released

from local_server import LocalServer
from released_reference import compact_state_dict

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    LAYOUTS = json.load(f)

V1 = sorted(hub_name(p) for p, i in RELEASED.items()
            if i.version == 'transcnn-v1')
HATNET = sorted(hub_name(p) for p, i in RELEASED.items()
                if i.version == 'hatnet')
TINY = 'hatnet-tiny'


def authors_file(preset, seed=0):
    """(bytes of a file as the authors' training script saves it, its
    state dict): random tensors in the released layout of ``preset``."""
    state_dict = compact_state_dict(LAYOUTS[preset]['state_dict'], seed)
    buffer = io.BytesIO()
    torch.save({'model': state_dict,
                'args': argparse.Namespace(model=preset)}, buffer)
    return buffer.getvalue(), state_dict


def expected_classifier(state_dict):
    backbone, head, _ = convert_released(state_dict)
    return {**{'backbone.' + k: v for k, v in backbone.items()},
            **{'head.' + k: v for k, v in head.items()}}


def assert_loaded(model, state_dict):
    """Every tensor of the classifier's backbone and head is the converted
    file's (and the file has nothing the classifier lacks)."""
    expected = expected_classifier(state_dict)
    own = {k: v for k, v in model.state_dict().items()
           if k.startswith(('backbone.', 'head.'))}
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


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

    monkeypatch.setattr(checkpoint_cache, 'download_url_to_file',
                        unreachable)
    home.downloads = downloads
    return home


def put_in_cache(home, preset, content):
    path = home / 'hub' / 'checkpoints' / RELEASED[preset].file
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
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.apis.model import ModelHub
schemes = dict(CheckpointLoader._schemes)
names = set(ModelHub._models_dict)
import mmtranscnn  # noqa: F401
added = {k: v for k, v in CheckpointLoader._schemes.items()
         if k not in schemes}
assert all(CheckpointLoader._schemes[k] is v for k, v in schemes.items())
print(sorted(v.__name__ for v in set(added.values())))
print(len(added))
print(sorted(set(ModelHub._models_dict) - names))
# mmpretrain's own index is parsed only when a hub function runs.
print(ModelHub._ModelHub__mmpretrain_registered)
'''


def test_import_adds_the_loader_and_the_entries_only():
    """In a fresh interpreter, ``import mmtranscnn`` adds one scheme per
    released link (no other scheme replaced) and the eight hub entries,
    without parsing mmpretrain's model index."""
    out = subprocess.run([sys.executable, '-c', IMPORT_GLUE], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    loaders, count, names, parsed = out.stdout.strip().splitlines()[-4:]
    assert loaders == "['load_from_released']"
    assert int(count) == sum(len(i.urls) for i in RELEASED.values())
    assert names == repr(sorted(V1 + HATNET))
    assert parsed == 'False'


def test_hub_entries_agree_with_model_index_and_the_configs():
    with open(osp.join(REPO, 'model-index.yml')) as f:
        index = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    for preset, info in RELEASED.items():
        name = hub_name(preset)
        entry = ModelHub._models_dict[name]
        # Registered on import without reading the config (lazy).
        assert isinstance(entry.config, str)
        assert osp.samefile(entry.config,
                            osp.join(REPO, index[name]['Config']))
        assert entry.weights == info.url == index[name]['Weights']
        assert [r.task for r in entry.results] == ['Image Classification']
    cfg = ModelHub.get(hub_name(TINY)).config  # what get_model builds
    assert cfg.model.backbone.arch == TINY
    assert cfg.model.head.num_classes == 1000


def _is_released_loader(fn) -> bool:
    """By name: a test elsewhere may import the package afresh, which
    registers a new function object of the same loader."""
    fn = getattr(fn, '__wrapped__', fn)
    want = (load_from_released.__module__, load_from_released.__name__)
    return (fn.__module__, fn.__name__) == want


def test_the_loader_answers_for_the_released_links_only():
    for info in RELEASED.values():
        for url in info.urls:
            assert _is_released_loader(
                CheckpointLoader._get_checkpoint_loader(url)), url
    folder = RELEASED[TINY].url.rsplit('/', 1)[0]
    for other in (folder + '/another.pth', RELEASED[TINY].url + '.bak',
                  'https://example.org/' + RELEASED[TINY].file):
        assert not _is_released_loader(
            CheckpointLoader._get_checkpoint_loader(other)), other


# -- get_model(pretrained=True) -----------------------------------------------
def test_get_model_loads_the_cached_file_converted(torch_home):
    content, state_dict = authors_file(TINY)
    put_in_cache(torch_home, TINY, content)
    model = mmpretrain.get_model(hub_name(TINY), pretrained=True)
    assert torch_home.downloads == []
    assert type(model.backbone).__name__ == 'TransCNN'
    assert model._config.model.backbone.arch == TINY
    assert_loaded(model, state_dict)


def test_get_model_downloads_through_the_fallback(tmp_path, monkeypatch):
    """The first version's file served only at its older link: get_model
    asks the first link, gets 404, downloads the fallback into the cache
    and loads it converted."""
    preset = 'transcnn-v1-tiny'
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(name, '127.0.0.1')
    content, state_dict = authors_file(preset, seed=1)
    file = RELEASED[preset].file
    paths = [f'/v1.0/{file}', f'/v1/{file}', f'/HAT-Net/v1.0/{file}']
    # The registries as they are now, restored after the test.
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        OrderedDict(CheckpointLoader._schemes))
    monkeypatch.setattr(ModelHub, '_models_dict',
                        dict(ModelHub._models_dict))
    with LocalServer(files={paths[1]: content}) as server:
        served = RELEASED[preset]._replace(
            urls=tuple(server.url(p) for p in paths))
        monkeypatch.setitem(presets.RELEASED, preset, served)
        pretrain_hub.register_released_classifiers()
        model = mmpretrain.get_model(hub_name(preset), pretrained=True)
        assert server.requests == paths[:2]
    assert osp.isfile(str(tmp_path / 'torch_home' / 'hub' / 'checkpoints' /
                          file))
    assert model._config.model.backbone.arch == preset
    assert_loaded(model, state_dict)


def test_the_link_loads_under_safe_checkpoint_loading(torch_home,
                                                      monkeypatch):
    """Our tools switch mmengine to safe loading, which wraps every
    registered loader: the link still loads converted, through
    mmengine's own load_checkpoint (what a run's ``load_from`` calls)."""
    from mmengine.runner import load_checkpoint

    from mmtranscnn.utils.checkpoint_safety import \
        enable_safe_checkpoint_loading
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        OrderedDict(CheckpointLoader._schemes))
    assert enable_safe_checkpoint_loading()
    url = RELEASED[TINY].url
    assert CheckpointLoader._get_checkpoint_loader(url) is not \
        load_from_released  # wrapped
    pretrain_hub.register_released_loader()  # keeps the wrapped one
    assert CheckpointLoader._get_checkpoint_loader(url).__wrapped__ is \
        load_from_released
    content, state_dict = authors_file(TINY, seed=2)
    put_in_cache(torch_home, TINY, content)
    model = mmpretrain.get_model(hub_name(TINY))  # random weights
    load_checkpoint(model, url, map_location='cpu', strict=True)
    assert_loaded(model, state_dict)


def test_a_cached_file_of_another_model_says_what_to_do(torch_home):
    content, _ = authors_file('transcnn-v1-tiny')
    where = put_in_cache(torch_home, TINY, content)  # under HAT-Net's name
    with pytest.raises(CheckpointFileError) as error:
        mmpretrain.get_model(hub_name(TINY), pretrained=True)
    message = str(error.value)
    assert RELEASED[TINY].url in message and where in message
    assert 'HAT-Net-Tiny' in message and 'transcnn-v1-tiny' in message
    assert torch_home.downloads == []


# -- the inferencer -----------------------------------------------------------
def test_image_classification_inferencer_runs(torch_home):
    from mmengine.registry import DefaultScope
    content, state_dict = authors_file(TINY)
    put_in_cache(torch_home, TINY, content)
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
