"""GSURE against closed-form truth: its estimate equals the supervised (density-weighted) error in expectation,
at the conditioning we ship (support-limited 8-coil maps: A^H A singular), not only in easy cases."""

import math
import sys
from pathlib import Path

import pytest
import torch

from mri_diffusion.losses.common import crandn, re_inner, sq_norm
from mri_diffusion.losses.gsure import gsure_loss, gsure_terms, network_input, output_and_directional
from mri_diffusion.nn import build_denoiser
from mri_diffusion.physics import Sense, fft2c, ifft2c
from mri_diffusion.physics.masks import RandomMask
from mri_diffusion.physics.polyinv import ChebyshevInverse, sense_bound
from mri_diffusion.types import MRIBatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gsure_inverse import realistic_batch, shrink_denoiser, smooth_denoiser  # noqa: E402


def toy_denoiser(u, sigma):
    """Smooth, non-holomorphic, spatially mixing: exercises the real Jacobian of a complex map."""
    s = sigma.reshape(-1, 1, 1)
    lin = 0.5 * u + 0.2 * torch.roll(u, 1, dims=-1) + 0.3 * u.conj()
    return lin / (1 + s**2) + 0.4 * torch.tanh(u.real) + 0.3j * torch.sin(u.imag + u.real)


def _setup(K=2000, C=3, H=12, W=10, noise_std=0.3, seed=0, maps=None):
    """A small well-conditioned problem (random dense maps)."""
    g = torch.Generator().manual_seed(seed)
    if maps is None:
        maps = crandn((1, C, H, W), g, "cpu")
        maps = maps / torch.sqrt(sq_norm(maps[0]).new_tensor(1.0) * (maps.abs() ** 2).sum(1, keepdim=True))
    sampler = RandomMask(2.5, 0.2)
    mask = sampler.sample((H, W), seed).reshape(1, 1, 1, W)
    density = sampler.density((H, W)).reshape(1, 1, 1, W)
    x = crandn((1, H, W), g, "cpu")
    A1 = Sense(maps, mask)
    rep = lambda t: t.expand(K, *t.shape[1:]).contiguous()  # noqa: E731
    y = rep(A1(x)) + crandn((K, maps.shape[1], H, W), g, "cpu", noise_std / math.sqrt(2)) * mask
    batch = MRIBatch(kspace=y, mask=rep(mask), maps=rep(maps), density=rep(density),
                     noise_std=torch.full((K,), noise_std))
    return batch, rep(x), g


def _bias(batch, x, g, sigma, denoiser=toy_denoiser, **kw):
    """(estimate - truth) per draw: sure + ||W^1/2 A x||^2 - ||W^1/2 A (h - x)||^2 (truth needs x: tests only)."""
    t = gsure_terms(denoiser, batch, sigma, g, **kw)
    A = Sense(batch.maps, batch.mask)
    Wt = batch.mask / batch.density if kw.get("weighted", True) else batch.mask
    err = A(t["h"] - x)
    return t, t["sure"] + re_inner(A(x), Wt * A(x)) - re_inner(err, Wt * err)


def _z(diff):
    return float(diff.mean() / (diff.std() / math.sqrt(diff.numel())))


# --- the approximate inverse ----------------------------------------------------------------------------

def test_chebyshev_inverse_is_a_fixed_linear_filter():
    """On a diagonal N the result is exactly f_K(lam) / lam; linear in b; f(0) = 0, f(b_max) = 1."""
    lam = torch.linspace(0, 2, 401, dtype=torch.float64)
    inv = ChebyshevInverse(12, 0.05)
    b1, b2 = torch.randn(2, 1, 401, dtype=torch.float64)
    x1 = inv.solve(lambda v: v * lam, b1[None], 2.0)
    assert torch.allclose(x1[0] * lam, inv.filter(lam, 2.0) * b1[0], atol=1e-12)
    x12 = inv.solve(lambda v: v * lam, (b1 + 3 * b2)[None], 2.0)
    assert torch.allclose(x12, x1 + 3 * inv.solve(lambda v: v * lam, b2[None], 2.0), atol=1e-12)
    f = inv.filter(lam, 2.0)
    assert f[0] == 0 and abs(float(f[-1]) - 1) < 1e-12
    assert float((1 - f[lam >= 0.1]).abs().max()) <= inv.accuracy() + 1e-12


def test_sense_bound_bounds_the_spectrum():
    batch, _, _ = realistic_batch(1, 32, 4.0, 0.05)
    A = Sense(batch.maps, batch.mask)
    v = crandn((1, 32, 32), torch.Generator().manual_seed(0), "cpu")
    for _ in range(50):  # power iteration
        v = A.normal(v)
        v = v / v.abs().pow(2).sum().sqrt()
    top = float(re_inner(v, A.normal(v))[0])
    assert top <= float(sense_bound(batch.maps, batch.mask)[0]) * (1 + 1e-5)
    assert top > 0.9  # and the bound is not loose here (maps normalised to 1 on the support)


# --- unbiasedness ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def realistic():
    """300 noise draws of one 40 x 40 slice: 8 support-limited coils, 4x 1-D random mask (A^H A singular).
    benchmarks/gsure_inverse.py runs the same check at 64 x 64 / 4x and 96 x 96 / 8x, and the old CG beside it."""
    return realistic_batch(300, 40, 4.0, 0.05)


@pytest.mark.parametrize("factor", [1.05, 4.0])
@pytest.mark.parametrize("denoiser", [smooth_denoiser, shrink_denoiser], ids=["smooth", "shrink"])
def test_gsure_unbiased_at_realistic_conditioning(realistic, denoiser, factor):
    batch, x, _ = realistic
    sigma = torch.full((batch.kspace.shape[0],), factor * 0.05 / math.sqrt(2))
    t, diff = _bias(batch, x, torch.Generator().manual_seed(7), sigma, denoiser, divergence="jvp")
    assert abs(_z(diff)) < 3, _z(diff)
    # the test can fail: without the divergence term the same estimate is far off
    assert abs(_z(diff - t["div"])) > 10


def test_gsure_estimate_is_unbiased_multicoil_with_finite_differences():
    batch, x, g = _setup()
    sigma = torch.full((batch.kspace.shape[0],), 0.5)
    t, diff = _bias(batch, x, g, sigma, divergence="fd")
    assert abs(_z(diff)) < 3
    assert abs(_z(diff - t["div"])) > 10


def test_gsure_finite_difference_divergence_agrees_with_jvp():
    batch, x, g = _setup(K=400)
    sigma = torch.full((400,), 0.5)
    t_fd = gsure_terms(toy_denoiser, batch, sigma, torch.Generator().manual_seed(1), divergence="fd", fd_rel=1e-3)
    t_jvp = gsure_terms(toy_denoiser, batch, sigma, torch.Generator().manual_seed(1), divergence="jvp")
    assert torch.allclose(t_fd["div"], t_jvp["div"], rtol=2e-2, atol=2e-2 * float(t_jvp["div"].abs().mean()))


def test_unweighted_gsure_is_unbiased_too():
    batch, x, g = _setup(seed=3)
    sigma = torch.full((batch.kspace.shape[0],), 1.0)
    _, diff = _bias(batch, x, g, sigma, divergence="jvp", weighted=False)
    assert abs(_z(diff)) < 3


# --- what the network sees ------------------------------------------------------------------------------

def test_single_coil_input_is_projected_image_plus_white_noise():
    """Single-coil: P = F^H M F (eigenvalues 0 and 1, where the filter is exact); u = P x + sigma * white noise."""
    K, H, W = 4000, 8, 8
    maps = torch.ones(1, 1, H, W, dtype=torch.complex64)
    batch, x, g = _setup(K=K, C=1, H=H, W=W, maps=maps, noise_std=0.2)
    sigma = torch.full((K,), 0.6)
    inp = network_input(batch, sigma, g, ChebyshevInverse(3, 0.2))
    Px = ifft2c(fft2c(x) * batch.mask[:, 0])
    noiseless = network_input(MRIBatch(**{**batch.__dict__, "kspace": Sense(maps, batch.mask[:1])(x[:1])}),
                              sigma[:1], g, ChebyshevInverse(3, 0.2)).z
    assert torch.allclose(noiseless[0], Px[0], atol=1e-5)  # the filter is exact at eigenvalue 1
    r = inp.u - Px
    var_per_channel = float((r.real**2).mean()), float((r.imag**2).mean())
    assert all(abs(v - 0.36) < 0.02 for v in var_per_channel)


def test_trivial_coil_maps_match_single_coil():
    """Two identical coils with maps 1/sqrt(2) are the single-coil problem: same z."""
    H, W = 10, 8
    g = torch.Generator().manual_seed(0)
    x = crandn((1, H, W), g, "cpu")
    mask = RandomMask(2.0, 0.25).sample((H, W), 0).reshape(1, 1, 1, W)
    y1 = Sense(None, mask, (H, W))(x)
    y2 = torch.cat([y1, y1], dim=1) / math.sqrt(2)
    maps2 = torch.full((1, 2, H, W), 1 / math.sqrt(2), dtype=torch.complex64)
    common = dict(mask=mask, density=torch.full_like(mask, 0.5), noise_std=torch.tensor([0.1]))
    b1 = MRIBatch(kspace=y1, maps=torch.ones(1, 1, H, W, dtype=torch.complex64), **common)
    b2 = MRIBatch(kspace=y2, maps=maps2, **common)
    s = torch.tensor([0.5])
    z1 = network_input(b1, s, torch.Generator().manual_seed(5)).z
    z2 = network_input(b2, s, torch.Generator().manual_seed(5)).z
    assert torch.allclose(z1, z2, atol=1e-4)  # float32 round-off of 20 Chebyshev steps


def test_gsure_loss_never_reads_the_target():
    batch, x, _ = _setup(K=4)
    with_target = MRIBatch(**{**batch.__dict__, "target": x})
    l1 = gsure_loss(toy_denoiser, batch, torch.Generator().manual_seed(0))
    l2 = gsure_loss(toy_denoiser, with_target, torch.Generator().manual_seed(0))
    assert torch.equal(l1, l2)


# --- mixed precision ------------------------------------------------------------------------------------

def test_divergence_survives_bf16_autocast():
    """Under bf16 autocast the directional derivative is within 5 % of an fp32 JVP; a bf16 difference is not."""
    torch.manual_seed(0)
    net = build_denoiser("tiny").eval()
    with torch.no_grad():  # EDM zero-initialises the output layer (D would be linear): make it a trained-like net
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    u = crandn((4, 32, 32), g, "cpu", 0.5)
    v = crandn((4, 32, 32), g, "cpu", 0.05)
    sigma = torch.tensor([0.05, 0.1, 0.3, 1.0])
    with torch.no_grad():
        _, ref = torch.func.jvp(lambda w: net(w, sigma), (u,), (v,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, jv = output_and_directional(net, u, sigma, v, "fd", 1e-3)
            h = net(u, sigma)  # what the old code differenced: two bf16 passes
            delta = (1e-3 * sigma / v.abs().pow(2).mean(dim=(1, 2)).div(2).sqrt()).reshape(-1, 1, 1)
            naive = (net(u + delta * v, sigma) - h) / delta
    rel = lambda a: float((sq_norm(a - ref) / sq_norm(ref)).sqrt().max())  # noqa: E731
    assert rel(jv) <= 0.05, rel(jv)
    assert rel(naive) > 0.5, rel(naive)  # the test can fail: this is what autocast did to the old divergence
