"""CPU bfloat16 mixed precision (mmtranscnn.engine.amp): the float32 detour
of one-pixel strided convs leaves the autocast state as it found it."""
import threading

import pytest
import torch
from mmengine.registry import OPTIM_WRAPPERS

from mmtranscnn.engine import amp


def _model_and_wrapper():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
    wrapper = OPTIM_WRAPPERS.build(
        dict(type='CPUBF16AmpOptimWrapper',
             optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    return model, wrapper


def _wrong_channels():
    return torch.randn(1, 3, 1, 1)  # the conv takes 8: its forward raises


def test_exception_in_fp32_conv_keeps_autocast_inside_the_context():
    model, wrapper = _model_and_wrapper()
    with wrapper.optim_context(model):
        with pytest.raises(RuntimeError):
            model(_wrong_channels())
        assert torch.is_autocast_enabled('cpu')
        # and the convs still take their usual dtypes afterwards
        assert model(torch.randn(1, 8, 1, 1)).dtype == torch.float32
        assert model(torch.randn(1, 8, 4, 4)).dtype == torch.bfloat16
        assert torch.is_autocast_enabled('cpu')
    assert not torch.is_autocast_enabled('cpu')
    assert amp._fp32_convs_running() == []


def test_exception_leaving_the_context_restores_autocast():
    model, wrapper = _model_and_wrapper()
    with pytest.raises(RuntimeError):
        with wrapper.optim_context(model):
            model(_wrong_channels())
    assert not torch.is_autocast_enabled('cpu')
    assert amp._fp32_convs_running() == []
    # under an autocast of the caller's own, the hooked conv gives it back
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            model(_wrong_channels())
        assert torch.is_autocast_enabled('cpu')
    assert not torch.is_autocast_enabled('cpu')


def test_threads_sharing_the_model_each_keep_their_autocast_state():
    """The hooks keep no per-call state on the module: threads running the
    same model at once, one at 1x1 (float32) and one at 4x4 (bfloat16),
    get what a single-threaded call gives."""
    model, _ = _model_and_wrapper()
    amp.run_one_pixel_strided_convs_in_fp32(model)
    inputs = {size: torch.randn(2, 8, size, size) for size in (1, 4)}
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        expected = {size: model(x) for size, x in inputs.items()}
    assert expected[1].dtype == torch.float32
    assert expected[4].dtype == torch.bfloat16

    failures = []
    start = threading.Barrier(4)

    def run(size):
        start.wait()
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            for _ in range(50):
                out = model(inputs[size])
                if not (torch.is_autocast_enabled('cpu')
                        and out.dtype == expected[size].dtype
                        and torch.equal(out, expected[size])):
                    failures.append(size)
                    return

    threads = [threading.Thread(target=run, args=(size, ))
               for size in (1, 4, 1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
