"""One eval model served by several threads at once gives each thread what
a single-threaded call gives, and the fast-path switches set in one thread
stay in that thread."""
import threading

import pytest
import torch

from mmtranscnn.models import TransCNN, fastpath
from mmtranscnn.models.fastpath import ConvNormAct
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


@pytest.mark.parametrize('fast', [True, False])
def test_threads_share_one_eval_model(fast):
    """Four threads start together on a fresh model (no shape seen before,
    no kernel chosen yet) and call it several times each."""
    fastpath.reset_tuning()
    model, inputs = _fresh_model(), _inputs()
    start = threading.Barrier(len(inputs))
    outputs = [[] for _ in inputs]
    errors = []

    def serve(i):
        try:
            with fastpath.enabled(fast), torch.no_grad():
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
    if fast:  # the fast paths really ran
        report = fastpath.tuning_report()
        assert report['conv'] and report['linear'] and report['attention']
    # The references after the threads: the kernels are chosen by now.
    with fastpath.enabled(fast), torch.no_grad():
        references = [model(x) for x in inputs]
    for i, (got, want) in enumerate(zip(outputs, references)):
        for call in got:
            for a, b in zip(call, want):
                assert torch.equal(a, b), f'thread {i} ({SIZES[i]})'


def test_eval_call_changes_no_module_attribute():
    """mmcv's ConvModule sets and deletes ``conv.forward`` on every eval
    call; ConvNormAct leaves every module's attributes as they were."""
    model, inputs = _fresh_model(), _inputs()

    def attributes():
        return {name: dict(vars(m)) for name, m in model.named_modules()}

    before = attributes()
    for fast in (True, False):
        with fastpath.enabled(fast), torch.no_grad():
            model(inputs[1])
    assert attributes() == before


def _graph_nodes(t):
    """Names of the autograd nodes that ``t`` was computed through."""
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_folded_eval_conv_keeps_gradients_and_fast_backward():
    """With the BN frozen in eval mode (``norm_eval``) and autograd on, the
    fold passes gradients to the conv and BN parameters, equal to conv
    then BN, and a 5x5 depthwise conv still takes its fast backward."""
    from mmtranscnn.models.fastpath import DepthwiseConv2d
    torch.manual_seed(0)
    module = ConvNormAct(8, 8, 5, padding=2, groups=8,
                         conv_cfg=dict(type=DepthwiseConv2d),
                         norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU'),
                         efficient_conv_bn_eval=True)
    randomise_bn(module)
    module.eval()
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    assert module.folds_norm()
    out = module(x)
    assert any('DepthwiseConvFn' in n for n in _graph_nodes(out)), \
        'the folded conv must reach the fast depthwise backward'
    params = [x] + list(module.parameters())
    got = torch.autograd.grad(out.square().sum(), params)
    unfolded = torch.nn.functional.silu(module.norm(module.conv(x)))
    want = torch.autograd.grad(unfolded.square().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_conv_with_hooks_runs_as_a_module():
    """A hook on the conv (spectral norm's among them) still runs: the conv
    is then called as a module and its BN after it."""
    torch.manual_seed(0)
    module = ConvNormAct(4, 6, 3, padding=1, norm_cfg=dict(type='BN'),
                         efficient_conv_bn_eval=True)
    randomise_bn(module)
    module.eval()
    seen = []
    handle = module.conv.register_forward_hook(
        lambda m, args, out: seen.append(out.shape))
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert not module.folds_norm()
        hooked = module(x)
    handle.remove()
    with torch.no_grad():
        assert module.folds_norm()
        folded = module(x)
    assert seen == [torch.Size([1, 6, 5, 5])]
    torch.testing.assert_close(hooked, folded, rtol=1e-5, atol=1e-5)


def _in_other_thread(fn):
    result = []
    t = threading.Thread(target=lambda: result.append(fn()))
    t.start()
    t.join()
    return result[0]


def test_switches_in_a_context_stay_in_their_thread():
    assert fastpath.is_enabled() and not fastpath.chooses_by_rule()
    with fastpath.enabled(False), fastpath.kernel_choice('rule'):
        assert not fastpath.is_enabled() and fastpath.chooses_by_rule()
        assert _in_other_thread(fastpath.is_enabled)
        assert not _in_other_thread(fastpath.chooses_by_rule)
    assert fastpath.is_enabled() and not fastpath.chooses_by_rule()
    # The process-wide setters reach every thread that has no override.
    fastpath.set_enabled(False)
    try:
        assert not _in_other_thread(fastpath.is_enabled)
        with fastpath.enabled(True):
            assert fastpath.is_enabled()
    finally:
        fastpath.set_enabled(True)
    with pytest.raises(TypeError, match='enabled takes a bool'):
        fastpath.enabled('off')
