"""The measuring tools (issues 7 and 13) and what they rely on.

* H-MHSA computes the same for NCHW and channels-last inputs (the
  benchmark's ``--channels-last``).
* The tools' measuring harness (``tools/analysis_tools/speed_harness.py``)
  measures memory before anything else and reports what it ran; the
  tools' option handling, target checks and plot work on small inputs.
* The ConvNeXt-T peer (backbone and our RetinaNet config of it) steps
  through the benchmark's own code path; every output (machine
  description, JSON, markdown) says which CPU and ISA it was measured
  with.
"""
import importlib
import json
import os.path as osp
import sys

import pytest
import torch

from mmtranscnn.analysis import count_flops, count_params
from mmtranscnn.models import HMHSA, TransCNN
from tool_modules import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools', 'analysis_tools')


def _tool(name):
    """A script of tools/analysis_tools, imported as Python runs it: with
    its own folder first on the path, where it finds ``speed_harness``."""
    return load_tool(f'tools/analysis_tools/{name}.py', f'_tool_{name}',
                     tool_dir_on_path=True)


# The one module the tools share, imported as they import it: by name,
# from their folder (one module in sys.modules).
sys.path.insert(0, TOOLS)
try:
    speed = importlib.import_module('speed_harness')
finally:
    sys.path.remove(TOOLS)

#: A TransCNN of one block per stage: the harness proves on it what it
#: proves on the presets (the presets' own numbers are tested
#: in test_transcnn.py and test_released.py).
TINY_ARCH = dict(channels=[16, 32, 32, 32], depths=[1, 1, 1, 1],
                 kernel_sizes=[3, 3, 3, 3], expand_ratios=[2, 2, 2, 2])
TINY = 'TransCNN-test-tiny'


def _tiny_transcnn(**kwargs):
    return TransCNN(TINY_ARCH, head_dim=16, **kwargs)


@pytest.fixture
def tiny_backbone(monkeypatch):
    """The tiny TransCNN as a benchmark model (built as TransCNN-Base is:
    norm_eval, grid sizes from the job)."""
    monkeypatch.setitem(speed.BACKBONES, TINY, (
        'mmtranscnn.models', 'TransCNN',
        dict(arch=TINY_ARCH, head_dim=16, norm_eval=True)))
    return TINY


# -- what the tools rely on --------------------------------------------------
@pytest.mark.parametrize('grids', [(4, ), (3, 2), 0])
def test_hmhsa_same_result_for_either_memory_format(grids):
    """A channels-last input (the benchmark's ``--channels-last``, or a
    user's ``model.to(memory_format=...)``) gives the NCHW result."""
    torch.manual_seed(0)
    m = HMHSA(32, grid_sizes=grids, head_dim=16).eval()
    x = torch.randn(2, 32, 11, 14)
    with torch.no_grad():
        a = m(x)
        b = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- the measuring library --------------------------------------------------
@pytest.mark.perf
def test_high_water_mark_reset():
    from mmtranscnn.engine.cpu_memory import trim_freed_memory
    if not speed.reset_hwm():
        pytest.skip('kernel refuses /proc/self/clear_refs')
    big = torch.ones(64 * 2**20 // 4)  # 64 MB
    big.add_(1)
    del big
    trim_freed_memory()
    assert speed.hwm_bytes() - speed.rss_bytes() > 32 * 2**20
    assert speed.reset_hwm()
    assert speed.hwm_bytes() - speed.rss_bytes() < 16 * 2**20


@pytest.mark.parametrize('field,value', [('kind', 'neck'), ('mode', 'fit'),
                                         ('device', 'tpu'),
                                         ('dtype', 'int8'),
                                         ('model', 'ViT-B')])
def test_job_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        speed.Job(**{'model': 'Swin-T', field: value}).validate()


def test_backbone_train_step_updates_the_weights(tiny_backbone):
    job = speed.Job(tiny_backbone, mode='train', height=64, width=64,
                    grid_sizes=[4, 2, 1, 0], threads=1).validate()
    model, step = speed.build_step(job)
    assert model.training and model.norm_eval
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn = model.stages[0][0].irb.expand.bn
    stats = bn.running_mean.clone()
    step()
    changed = [n for n, p in model.named_parameters()
               if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # AdamW moved every parameter
    assert torch.equal(bn.running_mean, stats)  # norm_eval kept statistics


def test_run_job_in_process(tiny_backbone):
    row = speed.run_job(speed.Job(tiny_backbone, height=64, width=64,
                                  grid_sizes=[4, 2, 1, 0], warmup=0,
                                  repeats=2, threads=1, flops=True))
    assert len(row['times_s']) == 2 and row['median_s'] > 0
    assert row['peak_mem_mb'] > 0
    model = _tiny_transcnn(grid_sizes=(4, 2, 1, 0))
    assert row['params_m'] == pytest.approx(count_params(model) / 1e6)
    want = count_flops(model, (1, 3, 64, 64))
    assert row['gflops'] == pytest.approx(want / 1e9)
    # the benchmark's own model is TransCNN-Base (Table 1: 26.0 M)
    base = speed.build_backbone('TransCNN-Base')
    assert count_params(base) / 1e6 == pytest.approx(26.0, abs=0.1)


@pytest.mark.slow
def test_subprocess_rows_and_failures():
    ok = speed.run_in_subprocess(speed.Job(
        'TransCNN-Base', height=64, width=64, warmup=0, repeats=1,
        threads=1), timeout=300)
    assert 'error' not in ok, ok.get('error')
    assert ok['job']['model'] == 'TransCNN-Base' and ok['img_per_s'] > 0
    assert len(ok['loadavg_before']) == 3
    bad = speed.run_in_subprocess(speed.Job(
        'TransCNN-Base', device='cuda', height=64, width=64, repeats=1),
        timeout=300) if not torch.cuda.is_available() else {'error': 'x'}
    assert 'error' in bad


@pytest.mark.slow
def test_detector_train_step_in_process():
    row = speed.run_job(speed.Job('TransCNN-Base', kind='detector',
                                  mode='train', height=64, width=96,
                                  warmup=0, repeats=1, threads=1))
    assert row['peak_mem_mb'] > 0 and row['median_s'] > 0
    assert row['saved_mb'] > 0  # counted over the memory step's forward


def test_detection_samples_hold_boxes_inside_the_image():
    samples = speed.detection_samples(2, 100, 150)
    for s in samples:
        b = s.gt_instances.bboxes
        assert b.shape == (5, 4)
        assert (b[:, 2:] > b[:, :2]).all()
        assert s.metainfo['batch_input_shape'] == (100, 150)


# -- the tools ----------------------------------------------------------------
def _row(model, img_s, mem, case='backbone-224', saved=None):
    return dict(job=dict(model=model, batch=8), img_per_s=img_s,
                median_s=8 / img_s, min_s=8 / img_s, max_s=8 / img_s,
                peak_mem_mb=mem, params_m=1., gflops=1., saved_mb=saved)


def test_benchmark_targets_met_and_missed():
    bench = _tool('benchmark')
    args = bench.parse_args(['--cases', 'backbone-224', 'backbone-det',
                             'backbone-train', '--models', 'TransCNN-Base',
                             'Swin-T'])
    results = {
        ('backbone-224', 'TransCNN-Base', 'fp32'): _row('TransCNN-Base', 21,
                                                        100),
        ('backbone-224', 'Swin-T', 'fp32'): _row('Swin-T', 20, 100),
        ('backbone-det', 'TransCNN-Base', 'fp32'): _row('TransCNN-Base', .8,
                                                        900),
        ('backbone-det', 'Swin-T', 'fp32'): _row('Swin-T', 1, 1000),
        ('backbone-train', 'TransCNN-Base', 'fp32'): _row(
            'TransCNN-Base', .5, 1400, saved=2500),
        ('backbone-train', 'Swin-T', 'fp32'): _row('Swin-T', 1, 1000,
                                                   saved=2000),
    }
    lines = bench.target_lines(results, args)
    assert 'img/s 1.05x Swin-T (target >= 1.05x): met' in lines[0]
    assert 'img/s 0.80x Swin-T (target >= 0.90x): MISSED' in lines[1]
    assert 'img/s 0.50x Swin-T (target >= 0.67x): MISSED' in lines[2]
    assert "saved for backward 2500 MB = 1.25x Swin-T's (target <= 1.25x)" \
        ': met' in lines[3]
    assert '1.40x' in lines[4] and lines[4].endswith('MISSED')
    results[('backbone-det', 'Swin-T', 'fp32')] = dict(
        job=dict(model='Swin-T'), error='boom')
    assert 'not measured' in bench.target_lines(results, args)[1]
    info = dict(date='d', cpu='c', logical_cpus=2, mem_gb=24., torch='t',
                load_min=.5, load_max=1.)
    text = bench.markdown(results, args, info)
    assert '| Swin-T | 1.0 | 1.00 | 20.00 | 20.00-20.00 | ' in text
    assert '| TransCNN-Base | 1.0 | 1.00 | 21.00 | 21.00-21.00 | ' in text
    assert "speed-ups" not in text  # every model as built
    assert '| 1000 | 2000 | 0.50x / 1.40x / 1.25x |' in text
    assert 'failed: boom' in text and 'flush-to-zero on' in text


def test_benchmark_batch_overrides_and_titles(capsys):
    bench = _tool('benchmark')
    args = bench.parse_args(['--batch', 'backbone-224=64', 'backbone-det=2'])
    assert args.batches == {'backbone-224': 64, 'backbone-det': 2}
    assert bench.case_title('backbone-224', 64) == \
        'Backbone, 224x224, batch 64, inference'
    assert bench.case_title('backbone-train-224', 8).endswith(
        'train step (forward + backward + AdamW)')
    assert 'backbone-train-224' not in args.cases  # only when asked for
    for bad, message in (('nope=2', 'unknown case'),
                         ('backbone-224=0', 'int >= 1'),
                         ('backbone-224', 'unknown case')):
        with pytest.raises(SystemExit):
            bench.parse_args(['--batch', bad])
        assert message in capsys.readouterr().err


def test_benchmark_rejects_unknown_models():
    bench = _tool('benchmark')
    with pytest.raises(SystemExit):
        bench.parse_args(['--cases', 'retinanet-train', '--models',
                          'Plain-Attention'])


def test_pool_rounds_takes_all_timings():
    bench = _tool('benchmark')
    a = dict(_row('Swin-T', 8, 100), times_s=[1., 3.],
             loadavg_before=[1, 1, 1], loadavg_after=[2, 2, 2])
    b = dict(_row('Swin-T', 8, 120), times_s=[2.],
             loadavg_before=[1, 1, 1], loadavg_after=[1, 1, 1])
    merged = bench.pool_rounds([a, b])
    assert merged['median_s'] == 2. and merged['img_per_s'] == 4.
    assert merged['peak_mem_mb'] == 110. and merged['rounds'] == 2


def test_get_flops_backbone_from_detection_config(capsys):
    tool = _tool('get_flops')
    tool.main([osp.join(REPO, 'configs', 'paper_arch',
                        'retinanet_transcnn-paper-base_fpn_1x_coco.py'),
               '--shape', '96', '128', '--backbone'])
    out = capsys.readouterr().out
    want = count_flops(TransCNN('base', grid_sizes=(16, 8, 4, 0)),
                       (1, 3, 96, 128))
    assert f'FLOPs: {want / 1e9:.3f} G' in out
    assert 'Params: 26.013 M' in out and 'scope mmdet' in out


@pytest.mark.slow
def test_get_flops_whole_classifier(capsys):
    tool = _tool('get_flops')
    tool.main([osp.join(REPO, 'configs', 'imagenet',
                        'transcnn-small_8xb128_in1k.py'), '--shape', '64',
               '--by-module', '1'])
    out = capsys.readouterr().out
    backbone = count_flops(TransCNN('small'), (1, 3, 64, 64))
    head = 512 * 1000
    assert f'FLOPs: {(backbone + head) / 1e9:.3f} G' in out
    assert 'scope mmpretrain' in out and '  backbone:' in out


def test_get_flops_by_operator_adds_up(capsys):
    tool = _tool('get_flops')
    tool.main([osp.join(REPO, 'configs', 'paper_arch',
                        'retinanet_transcnn-paper-small_fpn_1x_coco.py'),
               '--shape', '64', '96', '--backbone', '--by-operator'])
    out = capsys.readouterr().out
    model = TransCNN('small', grid_sizes=(16, 8, 4, 0))
    per_op = count_flops(model, (1, 3, 64, 96), by_operator=True)
    assert set(per_op) >= {'conv', 'linear', 'scaled_dot_product_attention'}
    assert sum(per_op.values()) == count_flops(model, (1, 3, 64, 96))
    for name, value in per_op.items():
        assert f'  {name}: {value / 1e9:.3f} G' in out


def test_plot_scaling_writes_a_png(tmp_path):
    tool = _tool('plot_scaling')
    rows = [dict(model=m, size=s, median_s=s / 100 * k, min_s=s / 110 * k,
                 max_s=s / 90 * k, peak_mem_mb=s * k, saved_mb=3 * s * k)
            for m, k in (('TransCNN-Base', 1), ('Swin-T', 2))
            for s in (256, 512)]
    rows.append(dict(model='Plain-Attention', size=2048, skipped='too big'))
    info = dict(cpu='c', threads=2, torch='t', date='d', load_min=0.1,
                load_max=0.2)
    out = tmp_path / 'p.png'
    tool.plot(rows, info, str(out))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    data = tmp_path / 'p.json'
    data.write_text(json.dumps(dict(machine=info, rows=rows)))
    tool.main(['--out', str(tmp_path / 'q.png'), '--from-json', str(data)])
    assert (tmp_path / 'q.png').exists()


def test_plot_scaling_extrapolation():
    tool = _tool('plot_scaling')
    # linear in pixels: 4x per doubling of the side
    t, m = tool.predict([(256, 1., 100.), (512, 4., 400.)], 1024)
    assert t == pytest.approx(16.) and m == pytest.approx(1600.)
    # quadratic growth is extrapolated as quadratic
    t, _ = tool.predict([(256, 1., 1.), (512, 16., 1.)], 1024)
    assert t == pytest.approx(256.)


# -- the ConvNeXt-T peer ------------------------------------------------------
def test_convnext_peer_backbone_step_in_process():
    row = speed.run_job(speed.Job('ConvNeXt-T', height=64, width=64,
                                  warmup=0, repeats=1, threads=1))
    assert row['job']['model'] == 'ConvNeXt-T' and row['median_s'] > 0
    assert row['params_m'] == pytest.approx(27.8, abs=0.1)
    assert row['cpu_capability'] == speed.aten_cpu_capability()


@pytest.mark.parametrize('mode', speed.MODES)
def test_convnext_peer_retinanet_steps(mode):
    from mmpretrain.models import ConvNeXt
    job = speed.Job('ConvNeXt-T', kind='detector', mode=mode, height=64,
                    width=64, threads=1).validate()
    model, step = speed.build_step(job)
    assert type(model).__name__ == 'RetinaNet'
    assert isinstance(model.backbone, ConvNeXt)
    assert model.backbone.gap_before_final_norm is False
    assert list(model.neck.in_channels) == [96, 192, 384, 768]
    assert model.neck.start_level == 1
    weight = model.neck.lateral_convs[0].conv.weight
    before = weight.detach().clone()
    step()
    assert torch.equal(weight, before) == (mode == 'infer')


def test_every_peer_config_is_found():
    for name, path in speed.DETECTORS.items():
        if '::' not in path:
            assert osp.isfile(speed.resolve_config(path)), name


# -- which CPU and ISA --------------------------------------------------------
XEON_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16

processor\t: 1
model name\t: another
"""


def test_parse_cpu_reads_name_vendor_signature_and_flags():
    got = speed.parse_cpu(XEON_CPUINFO, lscpu='')
    assert got['cpu'] == 'Intel(R) Xeon(R) Platinum 8480+'
    assert got['cpu_vendor'] == 'GenuineIntel'
    assert got['cpu_signature'] == 'family 6 model 143 stepping 8'
    assert got['hypervisor'] is False
    assert got['isa_flags'] == dict(
        avx2=True, avx512f=True, avx512_vnni=True, avx512_bf16=True,
        avx512_fp16=False, amx_tile=True, amx_bf16=True, amx_int8=False)
    # Where /proc/cpuinfo has no model name or vendor (ARM), lscpu has.
    got = speed.parse_cpu('processor\t: 0\nFeatures\t: fp asimd sve\n',
                          lscpu='Architecture:  aarch64\nVendor ID:  ARM\n'
                          'Model name:  Neoverse-V1\n')
    assert (got['cpu'], got['cpu_vendor']) == ('Neoverse-V1', 'ARM')
    assert got['cpu_signature'] is None and not any(
        got['isa_flags'].values())


def test_parse_onednn_verbose():
    for text in ('onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80af)\n'
                 'onednn_verbose,v1,info,cpu,isa:Intel AVX2\n',
                 'onednn_verbose,info,oneDNN v3.1.1 (commit 1)\n'
                 'onednn_verbose,info,cpu,isa:Intel AVX2\n'):
        isa, version = speed.parse_onednn_verbose(text)
        assert isa == 'Intel AVX2' and version.startswith('v3.1')
    assert speed.parse_onednn_verbose('') == (None, None)


def test_machine_info_reports_the_isa_in_force(monkeypatch):
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
    monkeypatch.delenv('ATEN_CPU_CAPABILITY', raising=False)
    info = speed.machine_info()
    for key in ('cpu', 'cpu_vendor', 'cpu_signature', 'hypervisor',
                'isa_flags', 'onednn_version', 'torch', 'torch_threads',
                'thread_env', 'date'):
        assert key in info, key
    assert info['cpu']
    assert set(info['isa_flags']) == set(speed.ISA_FLAGS)
    assert info['aten_cpu_capability'] == \
        torch.backends.cpu.get_cpu_capability()
    assert info['isa_env']['ONEDNN_MAX_CPU_ISA'] == 'AVX2'
    assert info['isa_env']['ATEN_CPU_CAPABILITY'] is None
    assert info['torch'] == torch.__version__
    if torch.backends.mkldnn.is_available():
        # The probe ran under the cap: oneDNN reports no AVX-512.
        assert info['onednn_isa'] and 'AVX-512' not in info['onednn_isa']
    assert speed.machine_info(probe_onednn=False)['onednn_isa'] is None


def test_benchmark_json_and_markdown_name_the_cpu(tmp_path, monkeypatch):
    bench = _tool('benchmark')
    info = speed.machine_info(probe_onednn=False)
    info['onednn_isa'] = 'Intel AVX-512 with Intel DL Boost'
    monkeypatch.setattr(bench, 'machine_info', lambda: dict(info))
    jobs = []

    def fake_run(job, timeout=None):
        jobs.append(job)
        return dict(_row(job.model, 10., 100.), times_s=[.8],
                    loadavg_before=[0., 0., 0.],
                    loadavg_after=[0., 0., 0.], cpu_capability='AVX512')

    monkeypatch.setattr(bench, 'run_in_subprocess', fake_run)
    out_json, out_md = tmp_path / 'b.json', tmp_path / 'b.md'
    bench.main(['--cases', 'backbone-224', 'retinanet-infer', '--models',
                'TransCNN-Base', 'ConvNeXt-T', '--repeats', '1',
                '--json', str(out_json), '--md', str(out_md)])
    # Each case, each model as built, in turn.
    assert [(j.kind, j.model) for j in jobs] == [
        (kind, model) for kind in ('backbone', 'detector')
        for model in ('TransCNN-Base', 'ConvNeXt-T')]
    jobs.clear()
    bench.main(['--cases', 'backbone-train', '--models', 'TransCNN-Base',
                'Swin-T', '--repeats', '1'])
    assert [(j.model, j.mode) for j in jobs] == [
        ('TransCNN-Base', 'train'), ('Swin-T', 'train')]
    saved = json.loads(out_json.read_text())
    machine = saved['machine']
    for key in ('cpu', 'cpu_vendor', 'cpu_signature', 'aten_cpu_capability',
                'onednn_isa', 'isa_env', 'isa_flags', 'torch',
                'torch_threads'):
        assert machine[key] == info[key], key
    assert machine['threads'] == 2  # the benchmark's, not this process's
    assert all(r['cpu_capability'] == 'AVX512' for r in saved['rows'])
    text = out_md.read_text()
    first = text.splitlines()[0]
    assert first.startswith('### ') and info['date'] in first
    assert info['cpu'] in first and info['aten_cpu_capability'] in first
    assert 'Intel AVX-512 with Intel DL Boost' in first
    assert f"ATen dispatch: {info['aten_cpu_capability']}" in text
    assert 'ONEDNN_MAX_CPU_ISA=' in text and 'ATEN_CPU_CAPABILITY=' in text
    have = [f for f, on in info['isa_flags'].items() if on]
    assert 'flags: ' + (' '.join(have) or 'none of interest') in text
    captions = [ln for ln in text.splitlines() if ln.startswith('**')]
    assert len(captions) == 2
    for line in captions:
        assert f"({info['cpu']}, ATen {info['aten_cpu_capability']}, " \
            'oneDNN Intel AVX-512 with Intel DL Boost, 2 threads)' in line
    assert '| ConvNeXt-T |' in text
    bench.main(['--cases', 'backbone-224', '--models', 'ConvNeXt-T',
                '--md', str(out_md), '--md-title', 'Run 3'])
    assert out_md.read_text().startswith('### Run 3\n')


# -- the released presets as benchmark models ---------------------------------
def test_released_presets_keep_their_windows_in_every_case():
    """The case's grid sizes become the pooling ratios of a released preset
    (its level-0 windows are what its weights were trained with)."""
    for case in ('backbone-224', 'backbone-det'):
        grids = _tool('benchmark').CASES[case][5]
        model = speed.build_backbone('HAT-Net-Small', grids)
        first = model.stages[2][1].attn  # [0] is the downsampling block
        assert first.grid_sizes == (7, )
        assert first.pool_ratios == (grids[2], )
    detector = speed.build_detector('TransCNN-v1-Small', [16, 8, 4, 0])
    attn = detector.backbone.stages[1][1].attn
    assert attn.grid_sizes == (8, ) and attn.pool_ratios == (8, )
