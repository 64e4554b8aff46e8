"""One eval model served by several threads at once: each thread gets what
a single-threaded call gives, and a call changes nothing outside its own
tensors (no module attribute, buffer or parameter, not its input)."""
import threading

import torch

from mmtranscnn.models import TransCNN
from random_bn import randomise_bn

# Every block kind: stem, two-branch downsampling, hierarchical H-MHSA with
# two grid levels and with one, plain attention, IRBs with 5x5 and 3x3
# depthwise convs. Small channels keep four threads quick on two cores.
ARCH = dict(channels=[32, 64, 64, 64], depths=[1, 1, 1, 1],
            kernel_sizes=[5, 3, 5, 3], expand_ratios=[2, 2, 2, 2],
            head_dim=32)
GRIDS = ((4, 2), 2, 2, 0)
# Per thread; the stride-4 maps (16x16, 18x22, 13x18, 12x25) are no
# multiples of the grids except the first.
SIZES = ((64, 64), (72, 88), (50, 70), (48, 97))
CALLS = 3


def _fresh_model():
    torch.manual_seed(0)
    model = TransCNN(ARCH, grid_sizes=GRIDS)
    randomise_bn(model)
    return model.eval()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, h, w, generator=gen) for h, w in SIZES]


def test_threads_share_one_eval_model():
    """Four threads, each with an input of its own size, start together on
    a model that has run nothing yet and call it several times each: every
    output equals, bit for bit, a single-threaded first call of a fresh
    copy of the model."""
    model, inputs = _fresh_model(), _inputs()
    with torch.no_grad():  # each input the first call of its own model
        references = [_fresh_model()(x) for x in inputs]
    start = threading.Barrier(len(inputs))
    outputs = [[] for _ in inputs]
    errors = []

    def serve(i):
        try:
            with torch.no_grad():
                start.wait()
                for _ in range(CALLS):
                    outputs[i].append(model(inputs[i]))
        except BaseException as e:  # reported below, with its thread
            errors.append((i, repr(e)))
            start.abort()

    threads = [threading.Thread(target=serve, args=(i, ))
               for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (got, want) in enumerate(zip(outputs, references)):
        assert len(got) == CALLS
        for call in got:
            assert len(call) == len(want) == 4
            for a, b in zip(call, want):
                assert torch.equal(a, b), f'thread {i} ({SIZES[i]})'


def test_eval_call_changes_nothing_outside_its_tensors():
    """An eval call, with autograd and without, leaves every module's
    attributes (the same objects: no forward or flag set and deleted per
    call, as mmcv's ``efficient_conv_bn_eval`` does), every parameter and
    buffer value (BN statistics) and its input as they were."""
    model, inputs = _fresh_model(), _inputs()

    def attributes():
        return {name: dict(vars(m)) for name, m in model.named_modules()}

    before = attributes()
    values = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs[1]
    kept = x.clone()
    model(x)
    with torch.no_grad():
        model(x)
    assert attributes() == before
    for name, value in model.state_dict().items():
        assert torch.equal(value, values[name]), name
    assert torch.equal(x, kept), 'the input was overwritten'
