"""Safe checkpoint loading (mmtranscnn.utils.checkpoint_safety).

The checkpoints here are real mmengine ones (a toy Runner with an optimizer,
a param scheduler and a message hub), loaded with ``weights_only=True`` kept:
a spy on ``torch.load`` fails the test if anything loads with full pickle
behind our back.
"""
import argparse
import copy
import io
import os.path as osp
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

import mmtranscnn.safe_checkpoints  # noqa: F401  (the opt-in under test)
from mmtranscnn.utils import checkpoint_safety as cs

from mmengine.hooks import Hook  # noqa: E402  (after mmtranscnn on purpose)
from mmengine.model import BaseModel, BaseModule
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint

EPOCHS = 2
ITERS_PER_EPOCH = 2  # 8 samples, batch 4


# --------------------------------------------------------------------------
# Toy model, data and a Runner factory
# --------------------------------------------------------------------------

class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return out


class ToyDataset(Dataset):
    # Runner puts dataset metainfo into the checkpoint meta.
    metainfo = dict(classes=('a', 'b'))

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(8, 2, generator=gen)
        self.labels = self.inputs.sum(1, keepdim=True)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return dict(inputs=self.inputs[i], labels=self.labels[i])


class RecordStateHook(Hook):
    """Snapshots what the Runner holds right after load/resume."""

    def before_train(self, runner):
        # deepcopy: state_dict()s share tensors that training then updates.
        runner.recorded = copy.deepcopy(dict(
            epoch=runner.epoch,
            iter=runner.iter,
            weights=runner.model.state_dict(),
            optimizer=runner.optim_wrapper.state_dict(),
            scheduler=[s.state_dict() for s in runner.param_schedulers],
            loss_history=runner.message_hub.get_scalar(
                'train/loss').data[0]
            if 'train/loss' in runner.message_hub.log_scalars else None))


def make_runner(work_dir, name, **kwargs):
    torch.manual_seed(0)
    cfg = dict(
        model=ToyModel(),
        work_dir=work_dir,
        experiment_name=name,
        default_scope=None,
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            batch_size=4,
            num_workers=0),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[1], by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=EPOCHS),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[RecordStateHook()],
        randomness=dict(seed=0),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_level='WARNING')
    cfg.update(kwargs)
    return Runner(**cfg)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A Runner trained for 2 epochs; its work dir holds epoch_{1,2}.pth."""
    work_dir = str(tmp_path_factory.mktemp('train'))
    runner = make_runner(work_dir, 'ckpt_safety_train')
    runner.train()
    return dict(
        work_dir=work_dir,
        final={k: v.clone()
               for k, v in runner.model.state_dict().items()})


@pytest.fixture
def torch_load_spy(monkeypatch):
    """Records the weights_only argument of every torch.load call."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    return calls


def assert_state_equal(a, b):
    """Nested dict/list/tensor equality."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    else:
        assert a == b


# --------------------------------------------------------------------------
# (a) resume, (b) load_from / load_checkpoint / init_cfg
# --------------------------------------------------------------------------

def test_opt_in_installs_safe_loader_idempotently():
    assert CheckpointLoader._get_checkpoint_loader('/x/y.pth') is \
        cs.load_from_local_safely
    before = dict(CheckpointLoader._schemes)
    assert cs.enable_safe_checkpoint_loading() is True
    assert dict(CheckpointLoader._schemes) == before
    # Remote schemes are wrapped once (what they wrap is mmengine's loader).
    http = CheckpointLoader._get_checkpoint_loader('https://a/b.pth')
    assert getattr(http, cs._SAFE_MARK)
    assert not getattr(http.__wrapped__, cs._SAFE_MARK, False)
    assert http.__name__ == 'load_from_http'


def test_other_schemes_get_the_allow_list(trained, tmp_path, monkeypatch):
    """A scheme registered later (e.g. a remote store) is covered too."""
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))
    files = dict(good=osp.join(trained['work_dir'], 'epoch_1.pth'),
                 evil=str(tmp_path / 'evil.pth'))
    marker = tmp_path / 'pwned_remote'
    torch.save({'meta': Payload(str(marker))}, files['evil'])

    def load_from_toystore(filename, map_location=None):
        with open(files[filename[len('toystore://'):]], 'rb') as f:
            return torch.load(io.BytesIO(f.read()), map_location=map_location)

    CheckpointLoader.register_scheme('toystore://', load_from_toystore)
    cs.enable_safe_checkpoint_loading()
    ckpt = CheckpointLoader.load_checkpoint('toystore://good')
    assert ckpt['meta']['epoch'] == 1
    with pytest.raises(cs.UntrustedCheckpointError,
                       match='(?s)builtins.exec.*cannot be opted in'):
        CheckpointLoader.load_checkpoint('toystore://evil')
    assert not marker.exists()


def test_runner_checkpoint_needs_the_allow_list(trained):
    """The premise: a Runner checkpoint is more than tensors."""
    ckpt = osp.join(trained['work_dir'], 'epoch_1.pth')
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(ckpt)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)  # stock torch, no allow-list


def test_resume_continues_from_checkpoint(trained, torch_load_spy):
    ckpt_path = osp.join(trained['work_dir'], 'epoch_1.pth')
    saved = cs.safe_torch_load(ckpt_path, map_location='cpu')
    assert saved['meta']['epoch'] == 1

    work_dir = osp.join(trained['work_dir'], 'resumed')
    runner = make_runner(
        work_dir, 'ckpt_safety_resume', load_from=ckpt_path, resume=True)
    runner.train()

    rec = runner.recorded
    assert (rec['epoch'], rec['iter']) == (1, ITERS_PER_EPOCH)
    assert_state_equal(rec['weights'], saved['state_dict'])
    assert_state_equal(rec['optimizer'], saved['optimizer'])
    assert_state_equal(rec['scheduler'], saved['param_schedulers'])
    # The message hub (HistoryBuffer with numpy arrays) came back too.
    saved_loss = saved['message_hub']['log_scalars']['train/loss']
    np.testing.assert_array_equal(rec['loss_history'], saved_loss.data[0])
    assert len(rec['loss_history']) == ITERS_PER_EPOCH
    # Continuing gives exactly the uninterrupted run's result.
    assert (runner.epoch, runner.iter) == (EPOCHS, EPOCHS * ITERS_PER_EPOCH)
    assert_state_equal(runner.model.state_dict(), trained['final'])

    assert torch_load_spy and all(w is True for w in torch_load_spy)


def test_load_from_without_resume(trained, torch_load_spy):
    ckpt_path = osp.join(trained['work_dir'], 'epoch_2.pth')
    runner = make_runner(
        osp.join(trained['work_dir'], 'load_from'), 'ckpt_safety_load_from',
        load_from=ckpt_path)
    runner.load_or_resume()
    assert runner.epoch == 0 and runner.iter == 0
    assert_state_equal(runner.model.state_dict(), trained['final'])
    assert torch_load_spy and all(w is True for w in torch_load_spy)


def test_plain_state_dict_and_pretrained_init(tmp_path, torch_load_spy):
    source = ToyModel()
    path = str(tmp_path / 'plain.pth')
    torch.save(source.state_dict(), path)

    target = ToyModel()
    load_checkpoint(target, path, strict=True)
    assert_state_equal(target.state_dict(), source.state_dict())

    class Wrapper(BaseModule):

        def __init__(self):
            super().__init__(
                init_cfg=dict(type='Pretrained', checkpoint=path))
            self.linear = nn.Linear(2, 1)

    wrapped = Wrapper()
    wrapped.init_weights()
    assert_state_equal(wrapped.state_dict(), source.state_dict())
    assert torch_load_spy and all(w is True for w in torch_load_spy)


def _rename_numpy_core(src, dst):
    """Rewrite a checkpoint as numpy 1.x writes it (``numpy.core`` paths)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray',
                                    b'numpy.core.multiarray')
            zout.writestr(info, data)


def test_numpy_objects_from_numpy_1_and_2(tmp_path):
    meta = dict(
        f64=np.float64(1.5), i64=np.int64(3), f32=np.float32(2.0),
        flag=np.bool_(True), array=np.arange(4.0), ints=np.arange(3),
        dtype=np.dtype('float32'))
    new = str(tmp_path / 'numpy2.pth')
    torch.save(dict(meta=meta), new)
    old = str(tmp_path / 'numpy1.pth')
    _rename_numpy_core(new, old)
    for path in (new, old):
        loaded = cs.safe_torch_load(path)['meta']
        assert loaded.keys() == meta.keys()
        for key, value in meta.items():
            assert type(loaded[key]) is type(value)
            np.testing.assert_array_equal(loaded[key], value)


def test_allow_list_is_scoped(tmp_path):
    """Loads leave torch's process-wide allow-list as they found it."""
    class UserThing:
        pass

    torch.serialization.add_safe_globals([UserThing])
    try:
        before = set(torch.serialization.get_safe_globals())
        path = str(tmp_path / 'np.pth')
        torch.save({'x': np.float64(1.0)}, path)
        cs.safe_torch_load(path)
        assert set(torch.serialization.get_safe_globals()) == before
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)  # numpy not allowed outside
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(
            [g for g in before if g is not UserThing])


def _process_state():
    """What a load must leave as it found: torch's allow-list (exactly) and
    the CPU autocast state."""
    from mmtranscnn.utils.torch_compat import (get_autocast_dtype,
                                               is_autocast_enabled)
    return (sorted(map(repr, torch.serialization.get_safe_globals())),
            is_autocast_enabled('cpu'), get_autocast_dtype('cpu'))


def _released_file_with_args(path):
    """A released-layout file (TransCNN-Tiny) as the authors' training
    script saves it: the weights and its argparse.Namespace."""
    import json

    from released_reference import compact_state_dict
    with open(osp.join(osp.dirname(__file__), 'data',
                       'released_layouts.json')) as f:
        layout = json.load(f)['transcnn-v1-tiny']['state_dict']
    torch.save({'model': compact_state_dict(layout),
                'args': argparse.Namespace(model='TransCNN_Tiny', lr=1e-3)},
               path)
    return path


@pytest.mark.parametrize('user_entries', ['none', 'namespace-and-own'])
@pytest.mark.parametrize('autocast', [False, True])
def test_loads_leave_safe_globals_and_autocast_as_they_were(
        trained, tmp_path, user_entries, autocast):
    """A released file with its training arguments, an mmengine checkpoint
    through our loader and through mmengine's: afterwards torch's global
    allow-list and autocast are exactly as before, entries the user added
    (the Namespace we allow too, among them) included."""
    from mmtranscnn.models import TransCNN, load_backbone_checkpoint

    class UserThing:
        pass

    released = _released_file_with_args(str(tmp_path / 'TransCNN-Tiny.pth'))
    mmengine_file = osp.join(trained['work_dir'], 'epoch_1.pth')
    original = torch.serialization.get_safe_globals()
    if user_entries != 'none':
        torch.serialization.add_safe_globals([argparse.Namespace, UserThing])
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            before = _process_state()
            load_backbone_checkpoint(TransCNN('transcnn-v1-tiny'), released)
            assert _process_state() == before
            cs.safe_torch_load(mmengine_file)
            assert _process_state() == before
            CheckpointLoader.load_checkpoint(mmengine_file)
            assert _process_state() == before
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(original)


def test_overlapping_loads_share_one_scope(tmp_path):
    """Two threads in the scoped allow-list: the first to leave does not
    pull the entries from under the other; the last restores the list."""
    import threading
    path = str(tmp_path / 'np.pth')
    torch.save({'x': np.float64(1.0)}, path)
    before = set(torch.serialization.get_safe_globals())
    entered, release, results = (threading.Event(), threading.Event(), [])

    def long_load():
        with cs.mmengine_safe_globals():
            entered.set()
            release.wait(timeout=60)
            results.append(torch.load(path, weights_only=True)['x'])

    thread = threading.Thread(target=long_load)
    thread.start()
    assert entered.wait(timeout=60)
    with cs.mmengine_safe_globals():  # a second, shorter load
        torch.load(path, weights_only=True)
    assert set(torch.serialization.get_safe_globals()) > before  # still on
    release.set()
    thread.join(timeout=60)
    assert results == [1.0]
    assert set(torch.serialization.get_safe_globals()) == before


def test_allow_list_scope_without_torchs_context(tmp_path, monkeypatch):
    """A torch that lists its allow-list but lacks the scoped context gets
    the same exact restore; one that cannot list it gets nothing added."""
    path = str(tmp_path / 'np.pth')
    torch.save({'x': np.float64(1.0)}, path)

    class UserThing:
        pass

    original = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([UserThing])
    try:
        monkeypatch.delattr(torch.serialization, 'safe_globals')
        before = set(torch.serialization.get_safe_globals())
        with cs.mmengine_safe_globals():
            assert torch.load(path, weights_only=True)['x'] == 1.0
        assert set(torch.serialization.get_safe_globals()) == before
        monkeypatch.delattr(torch.serialization, 'get_safe_globals')
        assert not cs.scoped_safe_globals_supported()
        with cs.mmengine_safe_globals():
            with pytest.raises(pickle.UnpicklingError):
                torch.load(path, weights_only=True)
    finally:
        monkeypatch.undo()
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(original)


# --------------------------------------------------------------------------
# (c) malicious pickles are refused, (d) explicit per-file opt-in
# --------------------------------------------------------------------------

class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()', )


class GetattrGadget:
    """Reaches for a non-whitelisted attribute through builtins.getattr."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, 'register_statistics')


def test_payload_is_live(tmp_path):
    """Guards the next test: the payload really runs code under pickle."""
    marker = tmp_path / 'pwned_by_pickle'
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(cs.TRUSTED_CHECKPOINTS_ENV, raising=False)
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save(
        dict(state_dict=ToyModel().state_dict(),
             meta=Payload(str(marker))), path)

    with pytest.raises(cs.UntrustedCheckpointError) as info:
        load_checkpoint(ToyModel(), path)
    message = str(info.value)
    assert 'builtins.exec' in message and 'not on the allow-list' in message
    assert f'{cs.TRUSTED_CHECKPOINTS_ENV}={osp.realpath(path)}' in message
    assert 'trust_checkpoint' in message
    assert info.value.globals == ['builtins.exec']
    assert not marker.exists()
    # Same through the Runner's route and for a raw (non-torch.save) pickle.
    with pytest.raises(cs.UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(path)
    raw = str(tmp_path / 'raw.pkl')
    with open(raw, 'wb') as f:
        pickle.dump(Payload(str(marker)), f, protocol=2)
    with pytest.raises(cs.UntrustedCheckpointError, match='builtins.exec'):
        CheckpointLoader.load_checkpoint(raw)
    assert not marker.exists()


def test_getattr_shim_refuses_other_attributes(tmp_path):
    path = str(tmp_path / 'gadget.pth')
    torch.save({'meta': GetattrGadget()}, path)
    with pytest.raises(cs.UntrustedCheckpointError,
                       match="getattr.*'register_statistics'.*not allowed"):
        cs.safe_torch_load(path)


@pytest.fixture
def legacy_file(tmp_path):
    """A trusted legacy checkpoint: its meta pickled an argparse.Namespace."""
    path = str(tmp_path / 'legacy.pth')
    model = ToyModel()
    torch.save(
        dict(state_dict=model.state_dict(),
             meta=dict(args=argparse.Namespace(lr=0.1))), path)
    return path, model.state_dict()


def test_opt_in_by_environment_names_one_file(legacy_file, tmp_path,
                                              monkeypatch, torch_load_spy):
    path, weights = legacy_file
    monkeypatch.delenv(cs.TRUSTED_CHECKPOINTS_ENV, raising=False)
    with pytest.raises(cs.UntrustedCheckpointError,
                       match='argparse.Namespace'):
        CheckpointLoader.load_checkpoint(path)

    other = str(tmp_path / 'other.pth')
    torch.save(dict(meta=argparse.Namespace(x=1)), other)
    monkeypatch.setenv(cs.TRUSTED_CHECKPOINTS_ENV, path)
    loaded = CheckpointLoader.load_checkpoint(path)
    assert loaded['meta']['args'].lr == 0.1
    assert_state_equal(loaded['state_dict'], weights)
    # Safe load tried first; full pickle only for the trusted file.
    assert torch_load_spy[-2:] == [True, False]
    with pytest.raises(cs.UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(other)  # not named: still refused


def test_opt_in_refuses_directories_and_patterns(legacy_file, monkeypatch):
    path, _ = legacy_file
    for entry in (osp.dirname(path), osp.join(osp.dirname(path), '*.pth')):
        monkeypatch.setenv(cs.TRUSTED_CHECKPOINTS_ENV, entry)
        with pytest.raises(ValueError, match='per file'):
            CheckpointLoader.load_checkpoint(path)
        with pytest.raises(ValueError, match='per file'):
            cs.trust_checkpoint(entry)


def test_opt_in_by_function(legacy_file, monkeypatch):
    path, _ = legacy_file
    monkeypatch.delenv(cs.TRUSTED_CHECKPOINTS_ENV, raising=False)
    cs.trust_checkpoint(path)
    try:
        assert cs.is_trusted_checkpoint(path)
        model = ToyModel()
        load_checkpoint(model, path, strict=True)
    finally:
        cs.untrust_checkpoint(path)
    assert not cs.is_trusted_checkpoint(path)
    with pytest.raises(cs.UntrustedCheckpointError):
        load_checkpoint(ToyModel(), path)


# --------------------------------------------------------------------------
# What importing the package changes, and torch's own opt-out
# --------------------------------------------------------------------------

def _run_python(code, **env):
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', code],
                         env=dict(os.environ, **env), capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_import_leaves_mmengine_loading_alone():
    """`import mmtranscnn` (custom_imports) registers models and nothing
    else: mmengine's loaders stay mmengine's until someone opts in."""
    code = (
        'import mmtranscnn, torch\n'
        'from mmengine.runner import CheckpointLoader\n'
        'from mmtranscnn.utils import safe_loading_enabled\n'
        'from mmengine.logging import HistoryBuffer\n'
        "before = CheckpointLoader._schemes['']\n"
        'print(safe_loading_enabled(), HistoryBuffer in torch.serialization.'
        'get_safe_globals())\n'
        'import mmtranscnn.safe_checkpoints\n'
        "print(safe_loading_enabled(), CheckpointLoader._schemes[''] is "
        'before)\n')
    assert _run_python(code) == ['False', 'False', 'True', 'False']


def test_tools_switch_safe_loading_on(tmp_path):
    """Our tools' runner builder opts in (resume/load_from of mmengine
    files on torch >= 2.6)."""
    code = ('import mmtranscnn\n'
            'from mmengine.config import Config\n'
            'from mmtranscnn.engine import build_runner\n'
            'from mmtranscnn.utils import safe_loading_enabled\n'
            'print(safe_loading_enabled())\n'
            'try:\n'
            '    build_runner(Config(dict(model=None)))\n'
            'except Exception:\n'
            '    pass\n'
            'print(safe_loading_enabled())\n')
    assert _run_python(code) == ['False', 'True']


def test_torch_opt_out_is_honoured(legacy_file, monkeypatch, torch_load_spy):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD keeps its documented meaning: files
    load as torch loads them (full pickle) instead of being refused."""
    path, weights = legacy_file
    monkeypatch.delenv(cs.TRUSTED_CHECKPOINTS_ENV, raising=False)
    for value in ('1', 'true', 'YES'):
        monkeypatch.setenv(cs.TORCH_OPT_OUT_ENV, value)
        loaded = CheckpointLoader.load_checkpoint(path)
        assert loaded['meta']['args'].lr == 0.1
        assert_state_equal(loaded['state_dict'], weights)
        assert torch_load_spy[-1] is None  # torch's default decided
    monkeypatch.setenv(cs.TORCH_OPT_OUT_ENV, '0')
    with pytest.raises(cs.UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(path)


def test_empty_numpy_arrays_load(tmp_path):
    """An empty array's data pickles as a call bytes(): as harmless as any
    other array's."""
    meta = dict(empty=np.array([]), empty2d=np.zeros((0, 3), np.float32),
                ints=np.array([], dtype=np.int64), full=np.arange(3.))
    path = str(tmp_path / 'empty.pth')
    torch.save(dict(meta=meta), path)
    loaded = cs.safe_torch_load(path)['meta']
    for key, value in meta.items():
        assert loaded[key].dtype == value.dtype
        assert loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
    # Through mmengine's route too (a message hub holding one).
    assert CheckpointLoader.load_checkpoint(path)['meta']['empty'].size == 0


def test_bytes_shim_refuses_sizes():
    assert cs._restricted_bytes() == b''
    assert cs._restricted_bytes(b'ab') == b'ab'
    with pytest.raises(pickle.UnpicklingError, match='bytes'):
        cs._restricted_bytes(10 ** 12)
