"""WeightsOnlyCheckpointHook: checkpoints that torch's default loader reads.

Unit checks of the conversion (what a Runner checkpoint holds goes in,
only what ``torch.load(weights_only=True)`` reads comes out, and back),
that our own loading reads both forms (the allow-list of
:mod:`mmtranscnn.utils.safe_loading`), and that every shipped config that
trains names the hook. The end-to-end
checks (a tiny run's checkpoint in mmdet's own tools/test.py, DetInferencer,
mmdeploy and a resumed run) are in tests/test_deployment.py.
"""
import glob
import io
import os.path as osp
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub

from mmtranscnn.engine.weights_only import (TAG, WeightsOnlyCheckpointHook,
                                            from_weights_only,
                                            to_weights_only)
from mmtranscnn.utils.safe_loading import safe_load

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HOOK_TYPE = 'mmtranscnn.WeightsOnlyCheckpointHook'


def runner_like_checkpoint():
    """What mmengine 0.10's Runner.save_checkpoint puts into a file: a
    message hub with HistoryBuffers, numpy scalars and arrays in meta and
    runtime info, and a state dict with its ``_metadata``."""
    hub = MessageHub(f'weights_only_test_{id(object())}')
    for i in range(3):
        hub.update_scalar('train/loss', 1.5 - i)
        hub.update_scalar('train/lr', 1e-3 * (i + 1), count=2)
    hub.update_info('iter', 3)
    hub.update_info('best_score', np.float64(0.25))
    state = OrderedDict(weight=torch.randn(2, 3), bias=torch.zeros(2))
    state._metadata = OrderedDict({'': {'version': 2}})
    meta = dict(epoch=1, iter=3, seed=np.int64(7), cfg='model = dict()',
                dataset_meta=dict(classes=('circle', 'ring'),
                                  palette=[(1, 2, 3), (4, 5, 6)],
                                  weights=np.arange(3, dtype=np.float32)))
    return dict(meta=meta, state_dict=state, message_hub=hub.state_dict(),
                optimizer=dict(state={0: dict(step=torch.tensor(3.))},
                               param_groups=[dict(lr=1e-3, params=[0])]))


def weights_only_round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture
def torch_default_allow_list():
    """Torch's ``weights_only`` allow-list as in a process that never
    opted in (another test module may have imported
    ``mmtranscnn.safe_checkpoints``, which adds to it for the process);
    restored afterwards."""
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(allowed)


def test_runner_checkpoint_needs_the_conversion(torch_default_allow_list):
    """Without it, torch's default loader refuses the Runner's objects
    (the reason the hook exists)."""
    assert HistoryBuffer not in torch.serialization.get_safe_globals()
    with pytest.raises(Exception, match='HistoryBuffer|numpy'):
        weights_only_round_trip(runner_like_checkpoint())


def test_our_loading_reads_either_form(tmp_path, torch_default_allow_list):
    """``safe_load`` (backbone init_cfg, converters) reads a Runner
    checkpoint as saved and as the hook converts it, leaving torch's
    allow-list as it found it."""
    original = runner_like_checkpoint()
    converted = dict(original)
    WeightsOnlyCheckpointHook().before_save_checkpoint(None, converted)
    for name, checkpoint in (('raw', original), ('converted', converted)):
        path = str(tmp_path / f'{name}.pth')
        torch.save(checkpoint, path)
        loaded = safe_load(path)
        assert torch.equal(loaded['state_dict']['weight'],
                           original['state_dict']['weight'])
        assert loaded['meta']['iter'] == 3
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer[TAG] == 'HistoryBuffer'
    raw = safe_load(str(tmp_path / 'raw.pth'))
    assert isinstance(raw['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    assert raw['meta']['seed'] == 7
    assert torch.serialization.get_safe_globals() == []


def test_converted_checkpoint_loads_with_weights_only_and_comes_back():
    original = runner_like_checkpoint()
    hook = WeightsOnlyCheckpointHook()
    checkpoint = dict(original)
    hook.before_save_checkpoint(None, checkpoint)
    loaded = weights_only_round_trip(checkpoint)
    # Plain data only: the objects are tagged dicts now.
    scalars = loaded['message_hub']['log_scalars']
    assert scalars['train/loss'][TAG] == 'HistoryBuffer'
    assert loaded['meta']['seed'] == {TAG: 'numpy_scalar', 'dtype': '<i8',
                                      'value': 7}
    assert list(checkpoint['message_hub']['log_scalars']) == [
        'train/loss', 'train/lr']
    # What nothing had to convert is the same object, not a copy.
    assert checkpoint['state_dict'] is original['state_dict']
    assert checkpoint['optimizer'] is original['optimizer']

    hook.after_load_checkpoint(None, loaded)
    hub = MessageHub(f'weights_only_loaded_{id(loaded)}')
    hub.load_state_dict(loaded['message_hub'])  # what --resume does
    for key in ('train/loss', 'train/lr'):
        want = original['message_hub']['log_scalars'][key]
        got = hub.get_scalar(key)
        assert isinstance(got, HistoryBuffer)
        for a, b in zip(got.data, want.data):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert got.max_length == want.max_length
        assert got.mean() == want.mean()
    best = hub.get_info('best_score')
    assert type(best) is np.float64 and best == 0.25
    seed = loaded['meta']['seed']
    assert type(seed) is np.int64 and seed == 7
    weights = loaded['meta']['dataset_meta']['weights']
    assert weights.dtype == np.float32
    assert np.array_equal(weights, np.arange(3))
    assert loaded['meta']['dataset_meta']['classes'] == ('circle', 'ring')
    state = loaded['state_dict']
    assert state._metadata == original['state_dict']._metadata
    assert torch.equal(state['weight'], original['state_dict']['weight'])


@pytest.mark.parametrize('value,where', [
    (dict(meta=dict(obj=object())), "checkpoint['meta']['obj']"),
    (dict(meta=dict(names=np.array(['a', 'b']))),
     "checkpoint['meta']['names']"),
    (dict(meta=[1, frozenset({2})]), "checkpoint['meta'][1]"),
    (dict(meta={np.int64(3)}), "checkpoint['meta']"),
    (dict(meta={TAG: 'mine'}), "checkpoint['meta']"),
])
def test_what_the_default_loader_refuses_stops_the_save_by_name(value,
                                                                where):
    with pytest.raises(TypeError) as info:
        WeightsOnlyCheckpointHook().before_save_checkpoint(None, value)
    assert where in str(info.value)


def test_unknown_tag_is_named():
    with pytest.raises(ValueError, match="'future'"):
        from_weights_only({TAG: 'future'})


def test_plain_data_passes_unchanged():
    data = dict(a=[1, 2.5, 'x', None, True], b=(torch.ones(1), b'raw'),
                c=OrderedDict(d=torch.Size([2, 3])),
                milestones=Counter({8: 1, 11: 1}), names={'a', 'b'})
    changed = dict(counts=Counter({8: np.int64(2)}),
                   ordered=OrderedDict([('b', np.float32(1)), ('a', 2)]))
    back = from_weights_only(weights_only_round_trip(to_weights_only(changed)))
    assert back == changed and list(back['ordered']) == ['b', 'a']
    assert type(back['counts']) is Counter
    assert type(back['ordered']['b']) is np.float32
    assert to_weights_only(data) is data
    assert from_weights_only(data) is data
    assert weights_only_round_trip(data) == data


# -- every shipped config that trains names the hook -------------------------
def training_configs():
    """The configs a user trains or tests with: all but the ``_base_``
    pieces and the deploy configs (which have no runner)."""
    found = []
    for path in sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                                 recursive=True)):
        parts = osp.relpath(path, osp.join(REPO, 'configs')).split(osp.sep)
        if '_base_' in parts or parts[0] in ('deploy', 'peers'):
            continue
        found.append(path)
    return found


def test_every_shipped_training_config_names_the_hook():
    configs = training_configs()
    assert len(configs) > 30, configs
    missing = []
    for path in configs:
        cfg = Config.fromfile(path, import_custom_modules=False)
        hooks = [h for h in cfg.get('default_hooks', {}).values()
                 if h and h.get('type') == HOOK_TYPE]
        if len(hooks) != 1:
            missing.append(osp.relpath(path, REPO))
    assert not missing, missing
