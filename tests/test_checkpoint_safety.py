"""Safe checkpoint loading (mmtranscnn.utils.safe_loading).

The checkpoints here are real mmengine ones (a toy Runner with an optimizer,
a param scheduler and a message hub), read through mmengine's own loaders
with torch's ``weights_only`` loading and our allow-list: a spy on
``torch.load`` fails a test if anything loads with full pickle.
"""
import copy
import fractions
import os
import os.path as osp
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

import mmtranscnn.safe_checkpoints  # noqa: F401  (the opt-in under test)
from mmtranscnn.models import TransCNN, load_backbone_checkpoint
from mmtranscnn.utils import safe_loading

from mmengine.hooks import Hook  # noqa: E402  (after mmtranscnn on purpose)
from mmengine.model import BaseModel, BaseModule
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint

from malicious import CodeOnLoad

EPOCHS = 2
ITERS_PER_EPOCH = 2  # 8 samples, batch 4


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


def test_resume_continues_from_checkpoint(trained, torch_load_spy):
    ckpt_path = osp.join(trained['work_dir'], 'epoch_1.pth')
    saved = safe_loading.safe_load(ckpt_path)
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
    # Continuing gives exactly the uninterrupted run's result.
    assert (runner.epoch, runner.iter) == (EPOCHS, EPOCHS * ITERS_PER_EPOCH)
    assert_state_equal(runner.model.state_dict(), trained['final'])
    # torch's default (None) is weights_only on every supported torch.
    assert torch_load_spy and all(w in (None, True) for w in torch_load_spy)


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
        dtype=np.dtype('float32'), empty=np.zeros((0, 3), np.float32))
    new = str(tmp_path / 'numpy2.pth')
    torch.save(dict(meta=meta), new)
    old = str(tmp_path / 'numpy1.pth')
    _rename_numpy_core(new, old)
    for path in (new, old):
        loaded = safe_loading.safe_load(path)['meta']
        assert loaded.keys() == meta.keys()
        for key, value in meta.items():
            assert type(loaded[key]) is type(value)
            np.testing.assert_array_equal(loaded[key], value)
        assert CheckpointLoader.load_checkpoint(path)['meta']['empty'].size \
            == 0


# --------------------------------------------------------------------------
# Malicious pickles are refused through every route we offer
# --------------------------------------------------------------------------

class GetattrGadget:
    """Reaches for a non-listed attribute through builtins.getattr."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, 'register_statistics')


class Forged:
    """A class of nobody's allow-list, pickled by reference."""


class PretrainedToy(BaseModule):
    """A module of another codebase, initialised by mmengine's Pretrained."""

    def __init__(self, path):
        super().__init__(init_cfg=dict(type='Pretrained', checkpoint=path))
        self.linear = nn.Linear(2, 1)


def payloads(tmp_path, marker):
    """The three kinds: code via __reduce__, a getattr chain, a forged
    global; each file also holds a real state dict."""
    state = TransCNN('small').state_dict()
    files = {}
    for name, meta in (('exec', CodeOnLoad(str(marker))),
                       ('getattr', GetattrGadget()), ('forged', Forged())):
        files[name] = str(tmp_path / f'{name}.pth')
        torch.save(dict(state_dict=state, meta=meta), files[name])
    return files


def test_malicious_files_are_refused(tmp_path):
    marker = tmp_path / 'pwned'
    # (the payload is live: plain pickle runs it)
    pickle.loads(pickle.dumps(CodeOnLoad(str(tmp_path / 'live'))))
    assert (tmp_path / 'live').exists()
    for kind, path in payloads(tmp_path, marker).items():
        routes = [
            lambda: safe_loading.safe_load(path),
            lambda: load_checkpoint(ToyModel(), path),  # Runner, load_from
            lambda: CheckpointLoader.load_checkpoint(path),
            lambda: load_backbone_checkpoint(TransCNN('small'), path),
            lambda: TransCNN('small', init_cfg=dict(
                type='Pretrained', checkpoint=path)).init_weights(),
            lambda: PretrainedToy(path).init_weights(),  # mmengine's init
        ]
        for route in routes:
            with pytest.raises(pickle.UnpicklingError):
                route()
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError,
                       match=r"(?s)refusing to load .*exec.pth.*exec"):
        safe_loading.safe_load(str(tmp_path / 'exec.pth'))
    with pytest.raises(pickle.UnpicklingError,
                       match='register_statistics.*is refused'):
        safe_loading.safe_load(str(tmp_path / 'getattr.pth'))


def test_bytes_shim_refuses_sizes():
    """``bytes(n)`` in a pickle would allocate n bytes: only copies pass."""
    shim = dict((name, obj) for obj, name in (
        e for e in safe_loading.checkpoint_safe_globals()
        if isinstance(e, tuple)))['builtins.bytes']
    assert shim() == b'' and shim(b'ab') == b'ab'
    with pytest.raises(pickle.UnpicklingError, match='bytes'):
        shim(10 ** 12)


# --------------------------------------------------------------------------
# What importing the package changes, and torch's own opt-out
# --------------------------------------------------------------------------

def _run_python(code, **env):
    out = subprocess.run([sys.executable, '-c', code],
                         env=dict(os.environ, **env), capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_import_changes_no_allow_list():
    """`import mmtranscnn` (custom_imports) leaves torch's allow-list alone;
    the opt-in module and our tools' runner builder add to it."""
    code = (
        'import torch, mmtranscnn\n'
        'from mmengine.logging import HistoryBuffer\n'
        'listed = lambda: HistoryBuffer in '
        'torch.serialization.get_safe_globals()\n'
        'print(listed())\n'
        'from mmengine.config import Config\n'
        'from mmtranscnn.engine import build_runner\n'
        'try:\n'
        '    build_runner(Config(dict(model=None)))\n'
        'except Exception:\n'
        '    pass\n'
        'print(listed())\n')
    assert _run_python(code) == ['False', 'True']
    assert _run_python('import torch, mmtranscnn.safe_checkpoints\n'
                       'print(len(torch.serialization.get_safe_globals()) '
                       '> 10)') == ['True']


def test_torch_opt_out_is_honoured(tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD keeps its documented meaning: the
    file loads as torch loads it (here a harmless Fraction off the list)."""
    path = str(tmp_path / 'fraction.pth')
    torch.save(dict(meta=fractions.Fraction(1, 3)), path)
    with pytest.raises(pickle.UnpicklingError, match='fractions.Fraction'):
        safe_loading.safe_load(path)
    code = ('from mmtranscnn.utils.safe_loading import safe_load\n'
            f'print(safe_load({path!r})["meta"])')
    assert _run_python(code, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1') == ['1/3']


def test_scoped_allow_list_is_shared_by_threads_and_restored(tmp_path):
    """Loads in several threads at once all see the allow-list; afterwards
    torch's list is as it was, with the user's own entry still on it (torch's
    ``safe_globals`` context would remove entries that were listed before,
    so the scope adds only what is missing)."""
    path = str(tmp_path / 'np.pth')
    torch.save({'x': np.arange(3.0), 'n': np.int64(2)}, path)
    code = (
        'import threading, torch, fractions\n'
        'from mmengine.logging import HistoryBuffer\n'
        'from mmtranscnn.utils.safe_loading import safe_load\n'
        'torch.serialization.add_safe_globals([HistoryBuffer, '
        'fractions.Fraction])\n'
        'before = set(torch.serialization.get_safe_globals())\n'
        'results, gate = [], threading.Barrier(4)\n'
        'def load():\n'
        '    gate.wait()\n'
        '    for _ in range(20):\n'
        f'        results.append(int(safe_load({path!r})["n"]))\n'
        'threads = [threading.Thread(target=load) for _ in range(4)]\n'
        '[t.start() for t in threads]; [t.join() for t in threads]\n'
        'print(results == [2] * 80, '
        'set(torch.serialization.get_safe_globals()) == before)\n')
    assert _run_python(code) == ['True', 'True']
