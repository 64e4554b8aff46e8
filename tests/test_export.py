"""A backbone traced or exported once holds at every input size.

H-MHSA pads maps to multiples of its grids and masks the padding; while a
model is traced or exported the padding and masks are built from the map's
size as tensor arithmetic, never from Python branches on sizes. So a graph
traced at one size computes, at sizes that need padding at every stage, what
the eager model computes:

* ``torch.jit.trace`` (no ONNX needed);
* the TorchScript ONNX exporter with dynamic H and W, run in ONNX Runtime;
* the dynamo ONNX exporter with a dynamic shape spec, run in ONNX Runtime.

Sizes: at the detection grids (16, 8, 4, 0) every one of them leaves a
remainder in every hierarchical stage (e.g. 200x200: maps of 50, 25, 13
against grids 16, 8, 4).
"""
import pytest
import torch

from mmtranscnn.models import TransCNN

SIZES = [(200, 200), (176, 144), (333, 517), (256, 320)]
TRACE_SIZE = (224, 224)
DET_GRIDS = (16, 8, 4, 0)


def _paper_small():
    return TransCNN('small', grid_sizes=DET_GRIDS)


def _released_twin():
    """HAT-Net's variant (ReleasedHMHSA, GroupNorm, its own pooling
    ratios) with a quarter of hatnet-small's channels."""
    arch = dict(TransCNN.arch_zoo['hatnet-small'])
    arch['channels'] = [c // 4 for c in arch['channels']]
    arch['head_dim'] = 16
    return TransCNN(arch, pool_ratios=DET_GRIDS)


def _merged_queries():
    """Eq. 9-12 as written, two grid levels in the first stage."""
    return TransCNN('small', grid_sizes=((8, 4), 8, 4, 0),
                    query_from='merged')


MODELS = {'paper-small': _paper_small, 'hatnet-twin': _released_twin,
          'merged-queries': _merged_queries}


def _model(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():  # BN statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _image(size, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *size, generator=gen)


def rel_err(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize('name', list(MODELS))
def test_traced_graph_holds_at_sizes_that_need_padding(name):
    model = _model(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, _image(TRACE_SIZE),
                                 check_trace=False)
        for size in SIZES:
            x = _image(size)
            for got, want in zip(traced(x), model(x)):
                assert got.shape == want.shape
                assert rel_err(got, want) <= 1e-5, size


def _run_onnx(path, sizes):
    ort = pytest.importorskip('onnxruntime')
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options,
                                   providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return {size: session.run(None, {name: _image(size).numpy()})
            for size in sizes}


def _check_onnx(model, path):
    outputs = _run_onnx(path, SIZES)
    with torch.no_grad():
        for size in SIZES:
            want = model(_image(size))
            got = outputs[size]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert tuple(g.shape) == tuple(w.shape), size
                assert rel_err(torch.from_numpy(g), w) <= 1e-4, size


@pytest.mark.parametrize('name', ['paper-small', 'hatnet-twin'])
def test_torchscript_onnx_export_with_dynamic_size(name, tmp_path):
    pytest.importorskip('onnx')
    model = _model(name)
    path = str(tmp_path / f'{name}.onnx')
    kwargs = {'dynamo': False} if 'dynamo' in torch.onnx.export.__code__ \
        .co_varnames else {}
    with torch.no_grad():
        torch.onnx.export(
            model, (_image(TRACE_SIZE), ), path, opset_version=17,
            input_names=['img'],
            output_names=[f'stage{i}' for i in range(4)],
            dynamic_axes={'img': {2: 'height', 3: 'width'}}, **kwargs)
    _check_onnx(model, path)


def test_dynamo_onnx_export_with_dynamic_size(tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxscript')
    if 'dynamo' not in torch.onnx.export.__code__.co_varnames:
        pytest.skip(f'torch {torch.__version__} has no dynamo exporter')
    from torch.export import Dim
    model = _model('hatnet-twin')
    path = str(tmp_path / 'dynamo.onnx')
    # From 33 px: at 32 px the stride-32 map is 1x1, which is NCHW- and
    # channels-last-contiguous at once, and torch.export guards on the
    # layout the model keeps its maps in (the TorchScript export above holds
    # at every size).
    height, width = Dim('height', min=33, max=4096), Dim(
        'width', min=33, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (_image(TRACE_SIZE), ), dynamo=True,
            dynamic_shapes={'x': {2: height, 3: width}})
    program.save(path)
    _check_onnx(model, path)
