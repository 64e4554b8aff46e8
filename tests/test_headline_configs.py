"""The headline COCO and ADE20K configs start from the authors' released
ImageNet files by URL, downloaded once into torch.hub's cache.

Offline throughout: every test that initialises weights points
``TORCH_HOME`` at a temporary folder and replaces torch's download function
(``torch.hub.download_url_to_file``), so nothing reaches the network.

- each headline config (RetinaNet, Mask R-CNN, Semantic FPN, UperNet; Base
  and Small) names the released preset and its URL, builds as
  tools/train.py builds it, and ``init_weights`` fills every backbone tensor
  from a file in the released layout placed where the cache expects it;
- a missing file without network stops with a message that names the URL,
  the cache path and the config key; a wrong file in the cache (the other
  release's layout, another size, a truncated copy, junk) with one that
  names the URL and the cache path, and says to delete it;
- a download lands at the cache path and is reused afterwards; under
  distributed training every rank meets rank 0 at the barrier;
- tools/train.py builds the Runner, whose weight initialisation loads the
  cached file;
- the README command's paths exist, and a downstream config inherits a
  headline config.
"""
import argparse
import copy
import functools
import json
import os
import os.path as osp
import shutil
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
from mmengine.config import Config

from mmtranscnn import get_config_path
from mmtranscnn.engine import setup_codebase
from mmtranscnn.models import TransCNN, pretrained
from mmtranscnn.models.pretrained import (CONFIG_KEY,
                                          CheckpointDownloadError,
                                          read_checkpoint)
from mmtranscnn.models.released import RELEASED, convert_released

from released_reference import compact_state_dict
from tool_modules import load_tool

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    LAYOUTS = json.load(f)

# Headline config -> the released preset its backbone is.
BASE, SMALL = 'transcnn-v1-small', 'transcnn-v1-tiny'
HEADLINE = {
    'retinanet_transcnn_base.py': BASE,
    'mask_rcnn_transcnn_base.py': BASE,
    'segmentation/fpn_transcnn-base_8xb4-40k_ade20k-512x512.py': BASE,
    'segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py': BASE,
    'retinanet_transcnn_small.py': SMALL,
    'mask_rcnn_transcnn_small.py': SMALL,
    'segmentation/fpn_transcnn-small_8xb4-40k_ade20k-512x512.py': SMALL,
    'segmentation/upernet_transcnn-small_8xb2-160k_ade20k-512x512.py': SMALL,
}


def compact_released_state_dict(preset, seed=0):
    """Random tensors in the released layout of ``preset`` (read off the
    authors' models, tests/data/released_layouts.json), a few MB on disk."""
    return compact_state_dict(LAYOUTS[preset]['state_dict'], seed)


def save_released(path, state_dict):
    """As the authors' training script saves: weights and its arguments."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save({'model': state_dict,
                'args': argparse.Namespace(model='TransCNN', lr=1e-3)}, path)


def cached_file(torch_home, preset):
    return osp.join(torch_home, 'hub', 'checkpoints', RELEASED[preset].file)


@pytest.fixture(scope='session')
def released_cache(tmp_path_factory):
    """A TORCH_HOME whose cache holds one released-layout file per preset of
    the headline configs; returns (torch_home, {preset: state dict})."""
    torch_home = str(tmp_path_factory.mktemp('torch_home'))
    saved = {}
    for seed, preset in enumerate((BASE, SMALL)):
        saved[preset] = compact_released_state_dict(preset, seed)
        save_released(cached_file(torch_home, preset), saved[preset])
    return torch_home, saved


@pytest.fixture
def no_network(monkeypatch):
    """Downloads fail as without network; the calls are recorded."""
    calls = []

    def unreachable(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', unreachable)
    return calls


@functools.lru_cache(maxsize=None)
def _config(path):
    return Config.fromfile(get_config_path(path))


def load_config(path):
    """The config as tools/train.py reads it, its codebase set up (a fresh
    copy of a cached read: mmdet's bases take a while to parse)."""
    cfg = copy.deepcopy(_config(path))
    setup_codebase(cfg)
    return cfg


def build_like_train_py(path):
    """Config.fromfile, the codebase's scope and registry, as
    tools/train.py's Runner builds the model."""
    from mmengine.registry import MODELS
    cfg = load_config(path)
    return cfg, MODELS.build(cfg.model)


def build_backbone(path):
    from mmengine.registry import MODELS
    return MODELS.build(load_config(path).model.backbone)


@pytest.mark.parametrize('path', sorted(HEADLINE))
def test_headline_config_names_the_released_file(path):
    cfg = _config(path)
    backbone = cfg.model.backbone
    preset = HEADLINE[path]
    assert backbone.type == 'TransCNN' and backbone.arch == preset
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=RELEASED[preset].url, prefix=None)
    # torch.hub caches it under the file's name.
    assert osp.basename(urlparse(backbone.init_cfg.checkpoint).path) == \
        RELEASED[preset].file
    # The released level-0 windows; level-1 pooling doubled as §4.4 does.
    assert tuple(backbone.grid_sizes) == (8, 8, 8, 0)
    assert tuple(backbone.pool_ratios) == (16, 8, 4, 0)
    channels = TransCNN.arch_zoo[preset]['channels']
    if 'neck' in cfg.model and 'in_channels' in cfg.model.neck:
        assert list(cfg.model.neck.in_channels) == channels
    else:
        assert list(cfg.model.decode_head.in_channels) == channels
        assert cfg.model.auxiliary_head.in_channels == channels[2]


@pytest.mark.parametrize('path', sorted(HEADLINE))
def test_headline_config_starts_from_the_cached_file(path, released_cache,
                                                     no_network,
                                                     monkeypatch):
    torch_home, saved = released_cache
    monkeypatch.setenv('TORCH_HOME', torch_home)
    cfg, model = build_like_train_py(path)
    model.init_weights()  # what the Runner calls before training
    assert no_network == []  # the cached file, no download
    expected, _head, _ = convert_released(saved[HEADLINE[path]])
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize('path', ['retinanet_transcnn_base.py',
                                  'segmentation/'
                                  'fpn_transcnn-small_8xb4-40k_ade20k-'
                                  '512x512.py'])
def test_missing_file_without_network_says_what_to_do(path, tmp_path,
                                                      no_network,
                                                      monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    backbone = build_backbone(path)
    preset = HEADLINE[path]
    url, where = RELEASED[preset].url, cached_file(str(tmp_path), preset)
    with pytest.raises(CheckpointDownloadError) as error:
        backbone.init_weights()
    message = str(error.value)
    assert url in message and where in message and CONFIG_KEY in message
    assert 'name resolution' in message  # why the download failed
    assert RELEASED[preset].drive_url in message
    assert error.value.url == url
    # Not a 404: the other links of the host are not tried.
    assert error.value.tried == [url]
    assert no_network == [(url, where)]
    assert not osp.exists(where)


def _other_release(path):
    save_released(path, compact_released_state_dict('hatnet-small'))


def _other_size(path):
    save_released(path, compact_released_state_dict(SMALL))


def _junk(path):
    with open(path, 'wb') as f:
        f.write(b'<html>404: Not Found</html>')


@pytest.mark.parametrize('write, reason', [
    (_other_release, r"released hatnet file that fits arch='hatnet-small'"),
    (_other_size, f"fits arch='{SMALL}'"),
    (_junk, r'UnpicklingError'),
    ('truncated', r'RuntimeError'),
], ids=['other-release', 'other-size', 'junk', 'truncated'])
def test_wrong_file_in_the_cache_says_what_to_do(write, reason, tmp_path,
                                                 released_cache, no_network,
                                                 monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = RELEASED[BASE].url
    where = cached_file(str(tmp_path), BASE)
    os.makedirs(osp.dirname(where))
    if write == 'truncated':
        with open(cached_file(released_cache[0], BASE), 'rb') as f:
            data = f.read()
        with open(where, 'wb') as f:
            f.write(data[:len(data) // 2])
    else:
        write(where)
    backbone = build_backbone('retinanet_transcnn_base.py')
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises((ValueError, RuntimeError), match=reason) as error:
        backbone.init_weights()
    message = str(error.value)
    assert url in message and where in message and 'delete it' in message
    assert no_network == []  # a file is there: no download is tried
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # nothing half-loaded


def test_download_lands_in_the_cache_and_is_reused(tmp_path, released_cache,
                                                  monkeypatch):
    torch_home = str(tmp_path / 'torch_home')
    monkeypatch.setenv('TORCH_HOME', torch_home)
    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append((url, dst))
        shutil.copy(cached_file(released_cache[0], SMALL), dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    where = cached_file(torch_home, SMALL)
    expected, _, _ = convert_released(released_cache[1][SMALL])
    for _ in range(2):
        backbone = build_backbone('retinanet_transcnn_small.py')
        backbone.init_weights()
        for key, value in expected.items():
            assert torch.equal(backbone.state_dict()[key], value), key
    assert calls == [(RELEASED[SMALL].url, where)]  # once, then the cache


@pytest.mark.parametrize('rank', [0, 1])
def test_every_rank_meets_at_the_barrier(rank, tmp_path, no_network,
                                         monkeypatch):
    """Two ranks: rank 0 downloads first, the others after the barrier;
    a failed or skipped download never leaves a rank waiting."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    barriers = []
    monkeypatch.setattr(pretrained, 'get_dist_info', lambda: (rank, 2))
    # Each barrier records how many downloads were tried before it.
    monkeypatch.setattr(torch.distributed, 'barrier',
                        lambda: barriers.append(len(no_network)))
    url = RELEASED[SMALL].url
    with pytest.raises(CheckpointDownloadError):
        read_checkpoint(url)
    # Rank 0 tries before the barrier, the others after it.
    assert barriers == [1 if rank == 0 else 0] and len(no_network) == 1
    where = cached_file(str(tmp_path), SMALL)
    state_dict = compact_released_state_dict(SMALL)
    # present now (shared or local file system)
    save_released(where, state_dict)
    loaded = read_checkpoint(url)
    assert set(loaded['model']) == set(state_dict)
    assert len(barriers) == 2 and len(no_network) == 1


@pytest.fixture
def own_allow_list():
    """The tools add mmengine's globals to torch's ``weights_only``
    allow-list for their process; the test process gets its own back."""
    allowed = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(allowed)


def test_train_py_builds_the_runner_and_loads_the_cached_file(
        released_cache, no_network, tmp_path, monkeypatch, own_allow_list):
    """``python tools/train.py configs/retinanet_transcnn_base.py`` up to the
    Runner's weight initialisation, the step before data is read (COCO is
    not here, so the test stops there instead of training)."""
    torch_home, saved = released_cache
    monkeypatch.setenv('TORCH_HOME', torch_home)
    train = load_tool('tools/train.py')
    # The process-wide malloc setting of a CPU run is the tool's own, not
    # this test process's.
    monkeypatch.setattr(train, 'keep_freed_memory_for_cpu_run', lambda: None)
    runners = []

    def init_weights_only(runner):
        runner._init_model_weights()  # what Runner.train() does first
        runners.append(runner)

    from mmengine.runner import Runner
    monkeypatch.setattr(Runner, 'train', init_weights_only)
    monkeypatch.setattr('sys.argv', [
        'tools/train.py', osp.join(REPO, 'configs',
                                   'retinanet_transcnn_base.py'),
        '--work-dir', str(tmp_path / 'work')])
    train.main()
    (runner, ) = runners
    assert no_network == []
    expected, _, _ = convert_released(saved[BASE])
    loaded = runner.model.backbone.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_dist_train_command_paths_exist():
    # bash tools/dist_train.sh configs/retinanet_transcnn_base.py 8
    assert osp.isfile(osp.join(REPO, 'tools', 'dist_train.sh'))
    assert osp.isfile(osp.join(REPO, 'configs', 'retinanet_transcnn_base.py'))
    assert osp.samefile(get_config_path('retinanet_transcnn_base.py'),
                        osp.join(REPO, 'configs',
                                 'retinanet_transcnn_base.py'))


def test_downstream_config_inherits_a_headline_config(tmp_path):
    config = tmp_path / 'retinanet_transcnn_base_mydata.py'
    config.write_text(
        "_base_ = __import__('mmtranscnn').get_config_path(\n"
        "    'retinanet_transcnn_base.py')\n"
        'model = dict(backbone=dict(pool_ratios=(8, 4, 2, 0)),\n'
        '             bbox_head=dict(num_classes=3))\n')
    cfg = Config.fromfile(str(config))
    backbone = cfg.model.backbone
    assert backbone.arch == BASE
    assert backbone.init_cfg.checkpoint == RELEASED[BASE].url
    assert tuple(backbone.pool_ratios) == (8, 4, 2, 0)
    assert cfg.model.bbox_head.num_classes == 3
    assert list(cfg.model.neck.in_channels) == [64, 128, 256, 512]
