"""mmtranscnn.utils.torch_compat: one form of the autocast state, the
gradient scaler and the "is dynamo tracing" check on every supported torch
(see setup.py)."""
import pytest
import torch

from mmtranscnn.utils import torch_compat


def test_autocast_state_follows_the_context():
    assert not torch_compat.is_autocast_enabled('cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch_compat.is_autocast_enabled('cpu')
        torch_compat.set_autocast_enabled('cpu', False)
        assert not torch_compat.is_autocast_enabled('cpu')
        x = torch.randn(4, 4)
        assert (x @ x).dtype == torch.float32  # autocast really is off
        torch_compat.set_autocast_enabled('cpu', True)
        assert (x @ x).dtype == torch.bfloat16
    assert not torch_compat.is_autocast_enabled('cpu')
    assert not torch_compat.is_autocast_enabled('cuda')


def test_autocast_dtype_follows_the_context():
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast('cpu', dtype=dtype):
            assert torch_compat.get_autocast_dtype('cpu') == dtype


def test_the_form_matches_this_torch():
    major, minor = (int(v) for v in torch.__version__.split('.')[:2])
    assert torch_compat.DEVICE_AUTOCAST_API == ((major, minor) >= (2, 4))


def test_grad_scaler_for_cuda():
    scaler = torch_compat.grad_scaler('cuda')
    assert hasattr(scaler, 'scale') and hasattr(scaler, 'unscale_')
    # Without a CUDA device the scaler disables itself and passes values.
    if not torch.cuda.is_available():
        loss = torch.tensor(2.)
        assert scaler.scale(loss) is loss or float(scaler.scale(loss)) == 2.


def test_is_compiling_sees_dynamo_tracing():
    """True while torch.compile (dynamo, also behind torch.export) traces
    the caller, False when it runs eagerly: H-MHSA builds its padding and
    masks from tensor arithmetic under it, so that a compiled graph holds
    at every input size."""
    def f(x):
        return x + 1 if torch_compat.is_compiling() else x - 1

    x = torch.zeros(1)
    assert not torch_compat.is_compiling()
    assert f(x).item() == -1
    compiled = torch.compile(f, backend='eager', fullgraph=True)
    assert compiled(x).item() == 1


@pytest.mark.skipif(torch_compat.DEVICE_AUTOCAST_API,
                    reason='this torch has the device-generic autocast API')
def test_old_torch_names_unknown_device_types():
    with pytest.raises(ValueError, match='device_type'):
        torch_compat.is_autocast_enabled('xpu')


def test_readme_states_the_version_ranges_of_the_package():
    """The README's compatibility table gives the ranges of
    mmtranscnn/utils/versions.py (which setup.py and the import check
    read), and this torch lies inside its range."""
    import os.path as osp
    import re

    from packaging.specifiers import SpecifierSet

    from mmtranscnn.utils.versions import REQUIREMENTS
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    with open(osp.join(repo, 'README.md')) as f:
        readme = f.read()
    for req in REQUIREMENTS:
        rows = re.findall(rf'^\| {req.name}\b[^|]*\| ([^|]+) \|', readme,
                          re.M)
        assert rows, f'README: no compatibility row for {req.name}'
        assert SpecifierSet(rows[0].replace(' ', '')) == \
            SpecifierSet(req.specifier), (req.name, rows[0], req.specifier)
    (torch_req, ) = [req for req in REQUIREMENTS if req.name == 'torch']
    assert torch.__version__ in SpecifierSet(torch_req.specifier)
