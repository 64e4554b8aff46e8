"""H-MHSA against a naive reference written straight from §3.2's equations.

The reference loops over grids and over real tokens only: it never pads, so
agreement on sizes that are not multiples of the grids also shows that the
module's padding does not leak into real outputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmtranscnn.models import HMHSA, hmhsa as hmhsa_module
from mmtranscnn.models.hmhsa import parse_grid_sizes


def _linear(layer, t):
    return F.linear(t, layer.weight, layer.bias)


def _mhsa(q, k, v, heads):
    """Eq. 1 with heads: q (Lq, C), k/v (Lk, C) -> (Lq, C)."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(d)
        out.append(torch.softmax(scores, dim=-1) @ v[:, sl])
    return torch.cat(out, dim=-1)


def _cells(size, g):
    """Index ranges of the grids along one axis (the last one may be short)."""
    return [range(s, min(size, s + g)) for s in range(0, size, g)]


def _merge(t, g):
    """Eq. 8 on a (h, w, C) map without padding: max + mean per region."""
    h, w, _ = t.shape
    rows = []
    for ry in _cells(h, g):
        row = []
        for rx in _cells(w, g):
            region = t[ry.start:ry.stop, rx.start:rx.stop].reshape(-1,
                                                                   t.shape[-1])
            row.append(region.max(0).values + region.mean(0))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def reference_hmhsa(m: HMHSA, x: torch.Tensor) -> torch.Tensor:
    heads, grids = m.num_heads, m.grid_sizes
    outs = []
    for xb in x:
        X = xb.permute(1, 2, 0)  # (H, W, C), pre-norm is identity here
        H, W, C = X.shape
        Q, K, V = _linear(m.qkv, X).chunk(3, dim=-1)
        g0 = grids[0] if grids else max(H, W)
        attn0 = torch.zeros_like(X)
        for ry in _cells(H, g0):
            for rx in _cells(W, g0):
                sl = (slice(ry.start, ry.stop), slice(rx.start, rx.stop))
                q, k, v = (t[sl].reshape(-1, C) for t in (Q, K, V))
                attn0[sl] = _mhsa(q, k, v, heads).reshape(len(ry), len(rx), C)
        total = attn0.clone()
        if grids:
            A0 = X + attn0  # Eq. 7
            prev, region, level = A0, 1, 1
            while True:
                merged = _merge(prev, grids[level - 1])
                region *= grids[level - 1]
                mh, mw, _ = merged.shape
                last = level == len(grids)  # then one grid over all
                gi = max(mh, mw) if last else grids[level]
                Km, Vm = _linear(m.kv, merged).chunk(2, dim=-1)
                attn = torch.zeros_like(X)
                if m.query_from == 'full':
                    Qf = _linear(m.q, A0)
                    for cy in _cells(mh, gi):
                        for cx in _cells(mw, gi):
                            k = Km[cy.start:cy.stop, cx.start:cx.stop]
                            v = Vm[cy.start:cy.stop, cx.start:cx.stop]
                            ys = slice(cy.start * region,
                                       min(H, cy.stop * region))
                            xs = slice(cx.start * region,
                                       min(W, cx.stop * region))
                            q = Qf[ys, xs]
                            out = _mhsa(q.reshape(-1, C), k.reshape(-1, C),
                                        v.reshape(-1, C), heads)
                            attn[ys, xs] = out.reshape(q.shape)
                    prev = merged
                else:
                    Qm = _linear(m.q, merged)
                    attn_m = torch.zeros_like(merged)
                    for cy in _cells(mh, gi):
                        for cx in _cells(mw, gi):
                            sl = (slice(cy.start, cy.stop),
                                  slice(cx.start, cx.stop))
                            q, k, v = (t[sl].reshape(-1, C)
                                       for t in (Qm, Km, Vm))
                            attn_m[sl] = _mhsa(q, k, v, heads).reshape(
                                len(cy), len(cx), C)
                    prev = merged + attn_m  # Eq. 11
                    for y in range(H):  # Upsample of Eq. 12
                        for xx in range(W):
                            attn[y, xx] = attn_m[y // region, xx // region]
                total = total + attn
                if last:
                    break
                level += 1
        out = _linear(m.proj, total)  # Eq. 12
        outs.append(xb + out.permute(2, 0, 1))
    return torch.stack(outs)


def _module(grids, query_from='full', dims=16, head_dim=8, seed=0):
    torch.manual_seed(seed)
    m = HMHSA(dims, grid_sizes=grids, head_dim=head_dim,
              query_from=query_from).eval()
    # Non-trivial biases so that padded zeros would not look like real
    # zero tokens after projection.
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


CASES = [
    ((8, 8), (4, )),
    ((13, 17), (4, )),
    ((7, 5), (3, )),
    ((16, 16), (2, 2)),
    ((29, 23), (3, 2, 2)),
    ((21, 30), (4, 3)),
    ((6, 6), (8, )),  # a grid larger than the map
]


@pytest.mark.parametrize('query_from', ['full', 'merged'])
@pytest.mark.parametrize('size,grids', CASES)
def test_matches_reference(size, grids, query_from):
    m = _module(grids, query_from)
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        got = m(x)
        want = reference_hmhsa(m, x)
        # float64: the two implementations agree to rounding error, which
        # shows the math is the same; float32: the module as users run it,
        # within a few ulps of outputs whose magnitude is ~10.
        got64 = m.double()(x.double())
        want64 = reference_hmhsa(m, x.double())
    assert got.shape == x.shape
    torch.testing.assert_close(got64, want64, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_plain_level_equals_torch_mhsa():
    """One level over the whole map is Eq. 1-2: attn Wp + X."""
    m = _module(0, dims=32, head_dim=8)
    assert not m.hierarchical and not hasattr(m, 'q')
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(m.qkv.weight)
        mha.in_proj_bias.copy_(m.qkv.bias)
        mha.out_proj.weight.copy_(m.proj.weight)
        mha.out_proj.bias.copy_(m.proj.bias)
    mha.eval()
    x = torch.randn(2, 32, 9, 11)
    tokens = x.flatten(2).transpose(1, 2)
    with torch.no_grad():
        want = tokens + mha(tokens, tokens, tokens, need_weights=False)[0]
        got = m(x)
    torch.testing.assert_close(
        got, want.transpose(1, 2).reshape_as(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('query_from', ['full', 'merged'])
def test_padding_content_never_reaches_real_outputs(monkeypatch, query_from):
    """Fill every padded position with huge values: real outputs unchanged."""
    m = _module((4, 3), query_from)
    x = torch.randn(1, 16, 13, 19)
    with torch.no_grad():
        clean = m(x)

    def loud_pad(t, height, width):
        return F.pad(t, (0, 0, 0, width - t.shape[2], 0, height - t.shape[1]),
                     value=1e4)

    monkeypatch.setattr(hmhsa_module, '_pad', loud_pad)
    with torch.no_grad():
        noisy = m(x)
    torch.testing.assert_close(noisy, clean, rtol=1e-5, atol=1e-5)


def test_grid_sizes_hold_no_weights():
    source = _module((8, ))
    state = source.state_dict()
    for grids in [(4, ), (2, 2), (16, 16, 4), 3]:
        target = HMHSA(16, grid_sizes=grids, head_dim=8)
        target.load_state_dict(state, strict=True)
        x = torch.randn(1, 16, 12, 12)
        assert target.eval()(x).shape == x.shape
    # Adding levels adds no weights.
    assert sum(p.numel() for p in HMHSA(16, (2, ), head_dim=8).parameters()) \
        == sum(p.numel() for p in HMHSA(16, (2, 2, 2), head_dim=8).parameters())


def test_every_parameter_gets_a_gradient():
    m = _module((4, 2)).train()
    x = torch.randn(2, 16, 10, 14, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_is_finite():
    m = _module((4, ))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(torch.randn(1, 16, 13, 9))
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize('value,match', [
    (-1, 'grid_sizes'),
    ((4, 0), r'grid_sizes\[1\]'),
    ('8', 'grid_sizes'),
    ((2.5, ), r'grid_sizes\[0\]'),
])
def test_bad_grid_sizes(value, match):
    with pytest.raises(ValueError, match=match):
        parse_grid_sizes(value)


def test_bad_arguments():
    with pytest.raises(ValueError, match='query_from'):
        HMHSA(16, head_dim=8, query_from='upsampled')
    with pytest.raises(ValueError, match='head_dim'):
        HMHSA(48, head_dim=64)
    with pytest.raises(ValueError, match=r'\(B, 16, H, W\)'):
        HMHSA(16, head_dim=8)(torch.randn(16, 8, 8))
