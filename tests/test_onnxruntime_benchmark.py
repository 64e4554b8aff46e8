"""tools/analysis_tools/onnxruntime_benchmark.py: its options and its table.

The export path it times is the deploy tool's (tests/test_deployment.py
runs it end to end); a measurement takes minutes, so here the table is
built from recorded results and the options are checked.
"""
import pytest

from tool_modules import load_tool


@pytest.fixture(scope='module')
def bench():
    # The script finds speed_harness in its own folder.
    return load_tool('tools/analysis_tools/onnxruntime_benchmark.py',
                     '_ort_benchmark', tool_dir_on_path=True)


def result(model, torch_s, ort_s):
    return dict(model=model, case='backbone-224', batch=8, height=224,
                width=224, rel_error={'onnxruntime': 2e-6},
                median_s={'pytorch': torch_s, 'onnxruntime': ort_s},
                ort='1.26.0')


def test_table_gives_each_route_and_the_speed_ups(bench):
    info = dict(cpu='Some CPU', logical_cpus=2, aten_cpu_capability='AVX2',
                onednn_isa='AVX2', torch='2.14.1')
    args = bench.parse_args([])
    table = bench.markdown([result('TransCNN-Base', 0.8, 0.4)], info, args)
    assert 'CPU: Some CPU' in table and 'ONNX Runtime 1.26.0' in table
    assert '2 threads, fp32' in table
    row = [line for line in table.splitlines()
           if line.startswith('| TransCNN-Base')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells == ['TransCNN-Base', '8x224x224', '0.800 s (10.00 img/s)',
                     '0.400 s (20.00 img/s)', '2.00x', '2.0e-06']


def test_defaults_and_refused_options(bench, capsys):
    args = bench.parse_args([])
    assert args.models == ['TransCNN-Base', 'Swin-T']
    assert args.cases == ['backbone-224', 'backbone-det']
    assert args.threads == 2
    for argv, field in ((['--threads', '0'], '--threads'),
                        (['--rounds', '0'], '--rounds'),
                        (['--warmup', '-1'], '--warmup'),
                        (['--cases', 'backbone-train'], '--cases')):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert field in capsys.readouterr().err
