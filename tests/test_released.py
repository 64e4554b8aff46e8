"""The authors' released ImageNet networks (TransCNN.py and HAT_Net.py).

- the eight presets have exactly the released files' keys and shapes
  (fixture tests/data/released_layouts.json, read off the released models)
  and their parameter counts with a 1000-class head: every key of a file in
  that layout maps onto the preset with its shape, checked on tensors
  without data ('meta'), through the strict loader and a file;
- a file in the released layout loads its values strictly through
  ``init_cfg`` in any wrapping (raw, ``{'model'}``, ``{'state_dict'}``,
  ``module.``, with an ``argparse.Namespace``) and through the converter; a
  pickle that would run code is refused; wrong files are reported by key,
  and a released file in a preset of another size or version by the
  preset it fits (through ``init_cfg`` and the converter).
  Values are checked on small networks with each preset's key layout (its
  style, depths, kernels, expansion ratios, windows, pooling ratios and
  heads; an eighth of its channels) and, through the converter, on the two
  Tiny presets;
- outputs equal those of a plain reference of the released equations
  (tests/released_reference.py) in float64 with random weights and measured
  BN statistics, where the released grids divide the maps and where they do
  not (padding masked);
- the presets take grid settings, out_indices, frozen_stages, norm_eval,
  with_cp and drop_path_rate like Table 1's, and run at 800x1333.
Random weights only; nothing is downloaded.
"""
import argparse
import json
import os
import os.path as osp
import pickle

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import mmtranscnn  # noqa: F401  (registers the models)
from mmtranscnn.models import (HMHSA, ReleasedHMHSA, TransCNN,
                               load_backbone_checkpoint)
from mmtranscnn.models.released import (RELEASED, convert_released,
                                        matching_presets)

from released_reference import (Reference, random_state_dict,
                                released_layout)
from tool_modules import load_tool

HERE = osp.dirname(osp.abspath(__file__))
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    FIXTURE = json.load(f)
PRESETS = list(RELEASED)
#: The two smallest released networks, one per version: the converter's
#: end-to-end runs use them (real tensors, ~50 MB per file).
TINY_PRESETS = ['transcnn-v1-tiny', 'hatnet-tiny']


def fixture_layout(preset):
    return {k: tuple(v) for k, v in FIXTURE[preset]['state_dict'].items()}


def twin(preset, factor=8):
    """A small network with the key layout of ``preset``.

    Same style, depths, kernel sizes, expansion ratios, windows, pooling
    ratios and number of heads; ``1/factor`` of the channels (and of the
    head dim). Its released-layout state dict has exactly the key names of
    the released file; only the channel dimensions of the shapes shrink.
    """
    arch = dict(TransCNN.arch_zoo[preset])
    arch['channels'] = [c // factor for c in arch['channels']]
    arch['head_dim'] = arch['head_dim'] // factor
    return arch


def layout_args(arch):
    """``released_layout``'s arguments for an arch name or dict."""
    if isinstance(arch, str):
        arch = TransCNN.arch_zoo[arch]
    return (arch['variant'], arch['channels'], arch['depths'],
            arch['kernel_sizes'], arch['expand_ratios'],
            [g if g else 1 for g in arch['grid_sizes']])


def released_file(tmp_path, arch, wrap=None, seed=0, name=None):
    """A random state dict in the released layout of ``arch`` (a preset
    name or a :func:`twin`), saved. Returns (path, state dict)."""
    sd = random_state_dict(released_layout(*layout_args(arch)), seed)
    obj = sd if wrap is None else wrap(sd)
    if name is None:
        name = RELEASED[arch].file if isinstance(arch, str) else 'twin.pth'
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path, sd


def without_data(layout):
    """Tensors with the shapes of ``layout`` and no storage ('meta')."""
    return {k: torch.empty(shape, device='meta') for k, shape in
            layout.items()}


def count(model, trainable=None):
    return sum(p.numel() for p in model.parameters()
               if trainable is None or p.requires_grad == trainable)


def test_every_release_has_a_preset_and_a_fixture():
    assert sorted(FIXTURE) == sorted(RELEASED)
    for preset in PRESETS:
        assert TransCNN.arch_zoo[preset]['variant'] == \
            RELEASED[preset].version
        # Our description of the released layout equals the released files'.
        assert released_layout(*layout_args(preset)) == fixture_layout(preset)
        # Its small twin has the same key names, smaller shapes.
        small = released_layout(*layout_args(twin(preset)))
        assert small.keys() == fixture_layout(preset).keys()


@pytest.mark.parametrize('preset', PRESETS)
def test_params_and_strict_load_of_the_released_layout(preset, tmp_path):
    """Parameter count with the 1000-class head equals the released
    model's; every key and shape of the released file maps onto the preset
    (tensors without data: the file holds no values), through the strict
    loader and init_cfg, and the converter finds the preset from them."""
    model = TransCNN(preset)
    channels = model.arch_settings['channels'][-1]
    head = channels * 1000 + 1000
    released = FIXTURE[preset]
    # The published count includes HAT-Net's never-called attn.proj_norm,
    # which is not built here and whose weights the conversion drops.
    assert count(model) + head + released['unused_params'] == \
        released['params']
    assert count(model, trainable=False) == 0

    sd = without_data(fixture_layout(preset))
    backbone, fc, version = convert_released(sd)
    assert version == RELEASED[preset].version
    dropped = [k for k in sd if '.attn.proj_norm.' in k]
    assert sum(sd[k].numel() for k in dropped) == released['unused_params']
    assert len(backbone) + len(fc) + len(dropped) == len(sd)
    own = model.state_dict()
    assert set(own) == set(backbone)
    for key, value in backbone.items():
        assert value.shape == own[key].shape, key
    assert fc['fc.weight'].shape == (1000, channels)
    assert matching_presets(sd) == [preset]

    # The whole loading path on a file of the released layout.
    path = str(tmp_path / RELEASED[preset].file)
    torch.save({'model': sd}, path)
    model = TransCNN(preset, init_cfg=dict(type='Pretrained',
                                           checkpoint=path)).to('meta')
    model.init_weights()
    report = load_backbone_checkpoint(model, path)
    assert not (report.missing or report.unexpected or report.mismatched)
    assert len(report.loaded) == len(own)


@pytest.mark.parametrize('preset', PRESETS)
def test_released_values_load_through_init_cfg(preset, tmp_path):
    """Each tensor of a released file lands where the mapping says, on a
    network with the preset's key layout."""
    arch = twin(preset)
    path, sd = released_file(tmp_path, arch)
    model = TransCNN(arch, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    own = model.state_dict()
    backbone, _, _ = convert_released(sd)
    assert set(own) == set(backbone)
    for key, value in backbone.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key



def _namespace_wrapped(sd):
    return {'model': sd, 'optimizer': {}, 'epoch': 299,
            'args': argparse.Namespace(model='HAT_Net_tiny', lr=8e-4,
                                       input_size=224, data_path='/x')}


@pytest.mark.parametrize('wrap', [
    lambda sd: {'model': sd},
    lambda sd: {'state_dict': sd, 'meta': {}},
    lambda sd: {'module.' + k: v for k, v in sd.items()},
    lambda sd: {'model': {'module.' + k: v for k, v in sd.items()}},
    _namespace_wrapped,
], ids=['model', 'state_dict', 'module-prefix', 'model+module',
        'training-script-namespace'])
def test_released_file_loads_in_any_wrapping(wrap, tmp_path):
    arch = twin('hatnet-tiny')
    path, sd = released_file(tmp_path, arch, wrap)
    model = TransCNN(arch)
    report = load_backbone_checkpoint(model, path, prefix='backbone.')
    assert not (report.missing or report.unexpected or report.mismatched)
    assert torch.equal(model.stem.conv1.gn.weight, sd['patch_embed.1.weight'])


class _Gadget:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null', ))


def test_released_file_with_a_code_gadget_is_refused(tmp_path):
    arch = twin('hatnet-tiny')
    sd = random_state_dict(released_layout(*layout_args(arch)))
    path = str(tmp_path / 'evil.pth')
    torch.save({'model': sd, 'args': _Gadget()}, path)
    with pytest.raises(pickle.UnpicklingError, match='system'):
        load_backbone_checkpoint(TransCNN(arch), path)


def test_wrong_released_file_is_reported(tmp_path):
    path, sd = released_file(tmp_path, twin('hatnet-small'))
    # Another version (the twin's layout fits no preset: named as such).
    with pytest.raises(ValueError, match=r'released hatnet file that fits '
                       r'no released preset.*custom dict'):
        load_backbone_checkpoint(TransCNN(twin('transcnn-v1-small')), path)
    paper = dict(channels=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                 kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6])
    with pytest.raises(ValueError, match=r'released hatnet file.*custom'):
        load_backbone_checkpoint(TransCNN(paper, head_dim=16), path)
    # Another size of the right version: named by key and shape.
    with pytest.raises(RuntimeError, match=r'shape differs: .*stages\.0'):
        load_backbone_checkpoint(TransCNN(twin('hatnet-tiny')), path)
    # A key with no counterpart is named.
    sd['blocks.0.0.conv.conv4.weight'] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(KeyError, match=r'blocks\.0\.0\.conv\.conv4\.weight'):
        load_backbone_checkpoint(TransCNN(twin('hatnet-small')), path)
    # One that maps to no tensor of the model, too.
    del sd['blocks.0.0.conv.conv4.weight']
    sd['blocks.0.0.attn.extra.weight'] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(RuntimeError,
                       match=r'not in the model: stages\.0\.0\.attn\.extra'):
        load_backbone_checkpoint(TransCNN(twin('hatnet-small')), path)
    # A missing one too.
    del sd['blocks.0.0.attn.extra.weight'], sd['blocks.2.7.attn.kv.bias']
    torch.save(sd, path)
    with pytest.raises(RuntimeError,
                       match=r'missing in the file: stages\.2\.8\.attn\.kv'):
        load_backbone_checkpoint(TransCNN(twin('hatnet-small')), path)


def _v1_tiny_file(tmp_path):
    """A file in the released TransCNN-Tiny layout (tensors without data:
    the preset is read off the shapes before any value is used)."""
    path = str(tmp_path / RELEASED['transcnn-v1-tiny'].file)
    torch.save({'model': without_data(fixture_layout('transcnn-v1-tiny'))},
               path)
    return path


@pytest.mark.parametrize('built', ['transcnn-v1-small', 'hatnet-tiny'])
def test_released_file_in_another_preset_names_the_one_it_fits(built,
                                                               tmp_path):
    """TransCNN-Tiny's file in a backbone of another size or version stops
    before anything is loaded, naming transcnn-v1-tiny as the preset it fits
    (and no other), through init_cfg as a config would load it."""
    path = _v1_tiny_file(tmp_path)
    model = TransCNN(built, init_cfg=dict(type='Pretrained',
                                          checkpoint=path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        model.init_weights()
    message = str(error.value)
    assert "fits arch='transcnn-v1-tiny', but" in message, message
    fits = message.split('fits ', 1)[1].split(', but', 1)[0]
    assert [p for p in RELEASED if f"'{p}'" in fits] == ['transcnn-v1-tiny']
    assert f"arch='{built}'" in message and path in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_converter_refuses_an_arch_the_file_does_not_fit(tmp_path):
    """``--arch transcnn-v1-small`` on TransCNN-Tiny's file: a ValueError
    naming transcnn-v1-tiny, before any model is built or loaded (no
    load_state_dict traceback), and nothing written."""
    converter = load_tool('tools/model_converters/hatnet2mmtranscnn.py',
                          'hatnet2mmtranscnn')
    path = _v1_tiny_file(tmp_path)
    out = tmp_path / 'converted.pth'
    with pytest.raises(ValueError) as error:
        converter.main([path, str(out), '--arch', 'transcnn-v1-small'])
    message = str(error.value)
    assert "['transcnn-v1-tiny']" in message
    assert "--arch 'transcnn-v1-small' is not one of them" in message
    assert 'load_state_dict' not in message
    assert not isinstance(error.value.__context__, RuntimeError)
    assert not out.exists()


@pytest.mark.parametrize('preset', TINY_PRESETS)
def test_converter_writes_a_strictly_loading_classifier(preset, tmp_path):
    """--arch, --backbone-only (the preset found from the shapes), and the
    refusals: an --arch of the other version, a file missing a tensor."""
    converter = load_tool('tools/model_converters/hatnet2mmtranscnn.py',
                          'hatnet2mmtranscnn')
    path, sd = released_file(tmp_path, preset)
    out = str(tmp_path / 'converted.pth')
    converter.main([path, out, '--arch', preset])
    converted = torch.load(out, weights_only=True)
    assert converted['meta']['arch'] == preset
    model = TransCNN(preset)
    channels = model.arch_settings['channels'][-1]
    keys = set(converted['state_dict'])
    assert keys == {'backbone.' + k for k in model.state_dict()} | {
        'head.fc.weight', 'head.fc.bias'}
    assert torch.equal(converted['state_dict']['head.fc.weight'],
                       sd['classifier.1.weight'])
    assert converted['state_dict']['head.fc.weight'].shape == (1000, channels)
    del converted
    report = load_backbone_checkpoint(model, out, prefix='backbone.')
    assert not (report.missing or report.unexpected or report.mismatched)
    own = model.state_dict()
    for key, value in convert_released(sd)[0].items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    os.remove(out)

    out = str(tmp_path / 'bb.pth')
    converter.main([path, out, '--backbone-only'])  # finds the preset
    converted = torch.load(out, weights_only=True)
    assert converted['meta']['arch'] == preset
    keys = converted['state_dict']
    assert keys and all(k.startswith('backbone.') for k in keys)
    del converted, keys
    os.remove(out)

    version = RELEASED[preset].version
    other = [p for p in TINY_PRESETS if p != preset][0]
    with pytest.raises(ValueError, match=f"released {version} file whose "
                       f"layout fits \\['{preset}'\\]; --arch '{other}'"):
        converter.main([path, str(tmp_path / 'x.pth'), '--arch', other])
    del sd['ds3.norm2.running_var' if version == 'transcnn-v1' else
           'ds3.norm.bias']
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match=r'ds3|stages\.2\.0'):
        converter.main([path, str(tmp_path / 'y.pth'), '--arch', preset])
    assert not osp.exists(tmp_path / 'y.pth')


# -- identical outputs ------------------------------------------------------
def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def _compare(arch, size, windows, pool_ratios, grid_sizes=None):
    """Ours vs the reference in float64: random released weights, BN
    statistics measured by the reference on one batch, outputs compared on
    another. Returns the largest relative error."""
    model = TransCNN(arch, grid_sizes=grid_sizes)
    a = model.arch_settings
    version = a.get('variant', 'paper')
    layout = released_layout(version, a['channels'], a['depths'],
                             a['kernel_sizes'], a['expand_ratios'], windows)
    sd = random_state_dict(layout, seed=1, dtype=torch.float64)
    head_dim = model.stages[0][0].attn.head_dim
    gen = torch.Generator().manual_seed(2)
    batch_a = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    batch_b = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    Reference(sd, version, head_dim, windows, pool_ratios,
              measure_bn=True)(batch_a)
    ref_outs, ref_logits = Reference(sd, version, head_dim, windows,
                                     pool_ratios)(batch_b)
    backbone, fc, _ = convert_released(sd)
    model = model.double().eval()
    model.load_state_dict(backbone, strict=True)
    with torch.no_grad():
        outs = model(batch_b)
    logits = torch.nn.functional.linear(outs[-1].mean(dim=(2, 3)),
                                        fc['fc.weight'], fc['fc.bias'])
    errors = [rel_err(o, r) for o, r in zip(outs, ref_outs)]
    errors.append(rel_err(logits, ref_logits))
    return max(errors)


@pytest.mark.parametrize('arch,size', [
    ('transcnn-v1-tiny', (128, 128)),   # the smallest size its grids divide
    ('hatnet-tiny', (224, 224)),
], ids=['transcnn-v1-tiny-128', 'hatnet-tiny-224'])
def test_outputs_equal_the_released_equations(arch, size):
    grids = TransCNN.arch_zoo[arch]['grid_sizes']
    windows = [g or 1 for g in grids]
    ratios = list(TransCNN.arch_zoo[arch]['pool_ratios'])
    assert _compare(arch, size, windows, ratios) <= 1e-4


# Small networks of each version: kernel 5, several heads, odd sizes.
SMALL_V1 = dict(variant='transcnn-v1', channels=[32, 64, 96, 128],
                depths=[1, 1, 2, 1], kernel_sizes=[5, 3, 5, 3],
                expand_ratios=[4, 4, 6, 6], head_dim=32,
                grid_sizes=(8, 8, 8, 0), pool_ratios=(8, 4, 2, 0))
SMALL_HAT = dict(SMALL_V1, variant='hatnet', head_dim=16,
                 expand_ratios=[8, 8, 4, 4], grid_sizes=(8, 7, 7, 0))


@pytest.mark.parametrize('arch,size', [
    (SMALL_V1, (100, 150)),
    (SMALL_HAT, (90, 130)),
], ids=['v1-100x150', 'hatnet-90x130'])
def test_outputs_equal_the_reference_at_any_size(arch, size):
    """Where the windows do not divide the maps, padding is masked out of
    attention, pooling and normalisation: ours equals the reference, which
    has no padding at all (smaller last windows and pooling regions)."""
    windows = [g or 1 for g in arch['grid_sizes']]
    assert _compare(arch, size, windows, list(arch['pool_ratios'])) <= 1e-4


def test_detection_grids_load_the_released_file_and_run_800x1333(tmp_path):
    path, _ = released_file(tmp_path, 'hatnet-tiny')
    model = TransCNN('hatnet-tiny', pool_ratios=(16, 8, 4, 0),
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1333))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (48, 200, 334), (96, 100, 167), (240, 50, 84), (384, 25, 42)]
    assert all(torch.isfinite(o).all() for o in outs)


# -- usable like every other setting ---------------------------------------
def test_more_levels_load_the_released_file_and_run_any_size(tmp_path):
    """Windows and pooling ratios per level are settings: a released file
    loads strictly into a preset built with two grid levels per stage."""
    path, _ = released_file(tmp_path, 'transcnn-v1-tiny')
    model = TransCNN('transcnn-v1-tiny', grid_sizes=((8, 4), (8, 4), 8, 0),
                     pool_ratios=((4, 2), (2, 2), 2, 0),
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert model.stages[0][0].attn.pool_ratios == (4, 2)
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 150, 203))
    assert [tuple(o.shape[2:]) for o in outs] == [(38, 51), (19, 26),
                                                  (10, 13), (5, 7)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('arch', ['transcnn-v1-tiny', 'hatnet-tiny'])
def test_training_options(arch):
    torch.manual_seed(0)
    model = TransCNN(arch, out_indices=(1, 3), drop_path_rate=0.1,
                     frozen_stages=1, norm_eval=True).train()
    x = torch.randn(2, 3, 64, 96)
    outs = model(x)
    assert [o.shape[1] for o in outs] == [model.num_features[i]
                                          for i in (1, 3)]
    sum(o.mean() for o in outs).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith(('stem.', 'stages.0.'))
                             for n in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert all(not m.training for m in model.modules()
               if isinstance(m, _BatchNorm))
    # with_cp recomputes the same function.
    plain = TransCNN(arch).eval()
    cp = TransCNN(arch, with_cp=True).eval()
    cp.load_state_dict(plain.state_dict())
    x.requires_grad_(True)
    assert torch.allclose(plain(x)[-1], cp(x)[-1], atol=1e-5)


def test_table1_presets_keep_the_papers_blocks():
    model = TransCNN('base')
    attn = model.stages[0][1].attn
    assert (model.variant, model.released_version) == ('paper', None)
    assert type(attn) is HMHSA and attn.grid_sizes == (8, )
    assert not hasattr(attn, 'grid_norm') and not hasattr(attn, 'ds_norm')
    assert model.stages[1][0].pool_branch is not None
    released = TransCNN('hatnet-tiny').stages[0][1].attn
    assert isinstance(released, ReleasedHMHSA)
    assert released.pool_ratios == (8, ) and released.grid_sizes == (8, )


def test_released_pool_ratios_are_checked():
    with pytest.raises(ValueError, match='pool_ratios needs one ratio'):
        ReleasedHMHSA(64, grid_sizes=8, pool_ratios=(4, 2))


def test_transcnn_pool_ratios_are_checked():
    with pytest.raises(ValueError, match=r'pool_ratios\[3\]'):
        TransCNN('hatnet-tiny', pool_ratios=(8, 4, 2, 2))
    with pytest.raises(ValueError, match='one entry per stage'):
        TransCNN('hatnet-tiny', pool_ratios=(8, 4))
    with pytest.raises(ValueError, match='released presets only'):
        TransCNN('base', pool_ratios=(8, 4, 2, 0))
    with pytest.raises(ValueError, match='arch variant must be one of'):
        TransCNN(dict(SMALL_V1, variant='v3'))
