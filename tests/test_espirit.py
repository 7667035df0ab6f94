"""Tests for the batched torch ESPIRiT (mri_diffusion.physics.coils) against sigpy.mri.app.EspiritCalib."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mri_diffusion.physics.coils import espirit, normalize_maps, rss
from mri_diffusion.physics.fft import fft2c

from .conftest import require, require_module

sp = require_module("sigpy")
mr = require_module("sigpy.mri")

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
BRAIN = REAL / "espirit_brain8ch" / "full.cfl"
SIM_BAR = 0.98  # per-pixel |<S_ours, S_sigpy>| / (|S_ours| |S_sigpy|) on sigpy's support


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- helpers


def similarity(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel normalised inner product over coils (axis 0) on ref's support; also returns the support."""
    sup = np.abs(ref).sum(0) > 0
    num = np.abs(np.sum(ours.conj() * ref, axis=0))
    den = np.linalg.norm(ours, axis=0) * np.linalg.norm(ref, axis=0)
    return (num / np.maximum(den, 1e-30))[sup], sup


def assert_similar(ours: np.ndarray, ref: np.ndarray, what: str, bar: float = SIM_BAR) -> None:
    sim, sup = similarity(ours, ref)
    assert sup.sum() > 0.2 * sup.size, f"{what}: sigpy support suspiciously small ({sup.sum()} px)"
    ours_sup = np.abs(ours).sum(0) > 0
    msg = (f"{what}: similarity mean={sim.mean():.6f} p1={np.percentile(sim, 1):.6f} min={sim.min():.6f} "
           f"on {sup.sum()} px (ours non-zero on {ours_sup.sum()} px, support mismatch "
           f"{np.sum(sup != ours_sup)} px)")
    print(msg)
    assert np.percentile(sim, 1) >= bar and sim.mean() >= bar, msg
    # support (eigenvalue > crop) should agree except for a handful of borderline pixels
    assert np.sum(sup != ours_sup) <= max(5, 1e-3 * sup.size), msg


def simulated_kspace(C: int = 8, H: int = 128, W: int = 128, phase: float = 0.5, noise: float = 1e-3,
                     seed: int = 0) -> np.ndarray:
    """(C, H, W) complex64 centred k-space: birdcage maps x smooth (blurred) Shepp-Logan with a phase ramp."""
    rng = np.random.default_rng(seed)
    maps = mr.birdcage_maps((C, H, W)).astype(np.complex64)
    img = sp.shepp_logan((H, W)).astype(np.complex64)
    ky = np.fft.fftshift(np.fft.fftfreq(H))[:, None]
    kx = np.fft.fftshift(np.fft.fftfreq(W))[None, :]
    img = sp.ifft(sp.fft(img) * np.exp(-(ky**2 + kx**2) / (2 * 0.08**2)))
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    img = img * np.exp(1j * phase * (yy + 0.5 * xx))
    k = fft2c(torch.from_numpy((maps * img[None]).astype(np.complex64))).numpy()
    n = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    return (k + noise * np.abs(k).max() / np.sqrt(2) * n).astype(np.complex64)


def sigpy_maps(k: np.ndarray, **kw) -> np.ndarray:
    return mr.app.EspiritCalib(k, show_pbar=False, **kw).run()


@pytest.fixture(scope="module")
def brain():
    require(BRAIN, f"real data not found: {BRAIN}")
    k = np.fromfile(BRAIN, np.complex64).reshape([1, 230, 180, 8], order="F")
    return np.ascontiguousarray(k[0].transpose(2, 0, 1))  # (8, 230, 180)


@pytest.fixture(scope="module")
def brain_maps(brain):
    return sigpy_maps(brain)


@pytest.fixture(scope="module")
def sim():
    return simulated_kspace()


@pytest.fixture(scope="module")
def sim_sigpy(sim):
    """sigpy's (maps, eigenvalues) for the simulated k-space."""
    return mr.app.EspiritCalib(sim, show_pbar=False, output_eigenvalue=True).run()


@pytest.fixture(scope="module")
def sim_maps(sim_sigpy):
    return sim_sigpy[0]


# ------------------------------------------------------------------------------------- accuracy vs sigpy


def test_matches_sigpy_real_brain(brain, brain_maps):
    ours = espirit(torch.from_numpy(brain)[None])
    assert ours.shape == (1, 8, 230, 180) and ours.dtype == torch.complex64
    assert_similar(ours[0].numpy(), brain_maps, "real 8-coil brain")


def test_matches_sigpy_simulated(sim, sim_maps):
    ours = espirit(torch.from_numpy(sim)[None])
    assert_similar(ours[0].numpy(), sim_maps, "simulated birdcage 8x128x128")


@pytest.mark.parametrize(
    "shape, kw",
    [
        ((8, 63, 50), {}),  # odd sizes: centring conventions
        ((6, 64, 51), {"kernel_width": 5, "calib_width": 21, "thresh": 0.05, "crop": 0.8, "max_iter": 30}),
        ((4, 40, 40), {"crop": 0.0, "max_iter": 7}),  # unconverged power method, no cropping
    ],
)
def test_matches_sigpy_other_parameters(shape, kw):
    k = simulated_kspace(*shape, seed=1)
    ref = sigpy_maps(k, **kw)
    ours = espirit(torch.from_numpy(k)[None], **kw)[0].numpy()
    assert_similar(ours, ref, f"simulated {shape} {kw}")


def test_eigenvalues_match_sigpy(sim, sim_sigpy):
    ref_eig = sim_sigpy[1]
    maps, eig = espirit(torch.from_numpy(sim)[None], output_eigenvalue=True)
    assert eig.shape == (1, 128, 128) and eig.dtype == torch.float32
    err = np.abs(eig[0].numpy() - ref_eig).max()
    assert err < 1e-4, f"max eigenvalue difference {err}"


def test_undersampled_acs(brain, brain_maps):
    """1-D undersampled k-space (R=4 + 24 ACS columns): the square 24 calibration region lies inside the ACS
    band, so the maps equal sigpy's on the fully sampled data; a rectangular calib limited to the ACS band by
    calib_mask_width gives nearly the same maps."""
    C, H, W = brain.shape
    mask = np.zeros(W, bool)
    mask[::4] = True
    mask[W // 2 - 12: W // 2 + 12] = True  # sigpy's 24-wide calib columns: W//2 - 12 ... W//2 + 11
    k_us = (brain * mask).astype(np.complex64)
    ours = espirit(torch.from_numpy(k_us)[None], calib_width=24)[0].numpy()
    assert_similar(ours, brain_maps, "undersampled brain (R=4, 24 ACS), calib 24, vs sigpy on full data")

    rect = espirit(torch.from_numpy(k_us)[None], calib_width=(64, 48), calib_mask_width=24)[0].numpy()
    sim_, sup = similarity(rect, brain_maps)
    inner = np.abs(rect).sum(0)[sup] > 0
    assert inner.mean() > 0.95, f"rectangular calib support covers only {inner.mean():.3f} of sigpy's"
    assert np.median(sim_[inner]) > 0.98, f"rectangular calib vs full maps: median similarity {np.median(sim_[inner])}"


def test_tuple_calib_width_equals_int(sim):
    k = torch.from_numpy(sim)[None]
    a = espirit(k, calib_width=24)
    b = espirit(k, calib_width=(24, 24), kernel_width=(6, 6))
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------- structural properties


def test_unit_norm_on_support(sim):
    maps = espirit(torch.from_numpy(sim)[None])
    power = (maps.abs() ** 2).sum(1)[0]
    sup = power > 0
    assert sup.float().mean() > 0.2
    err = (power[sup] - 1).abs().max().item()
    assert err < 1e-4, f"max | sum_c |S_c|^2 - 1 | on the support = {err}"
    # phase convention: coil 0 real non-negative on the support
    s0 = maps[0, 0][sup]
    assert s0.imag.abs().max() < 1e-5 and (s0.real >= 0).all()


def test_batched_equals_per_slice(sim):
    k2 = simulated_kspace(phase=1.3, seed=3)
    k = torch.from_numpy(np.stack([sim, k2]))
    both = espirit(k)
    assert both.shape == (2, 8, 128, 128)
    for b in range(2):
        single = espirit(k[b: b + 1])
        torch.testing.assert_close(both[b: b + 1], single, atol=1e-5, rtol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-3  # different slices really differ


def test_chunking_does_not_change_result(sim):
    k = torch.from_numpy(sim)[None]
    a = espirit(k, chunk_pixels=1000)
    b = espirit(k, chunk_pixels=1 << 20)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(sim):
    k = torch.from_numpy(np.stack([sim, simulated_kspace(phase=1.3, seed=3)]))
    cpu = espirit(k)
    gpu = espirit(k.to("cuda"))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.complex64 and gpu.shape == cpu.shape
    for b in range(2):
        assert_similar(gpu[b].cpu().numpy(), cpu[b].numpy(), f"cuda vs cpu slice {b}", bar=0.999)


def test_rejects_real_input():
    with pytest.raises(ValueError):
        espirit(torch.zeros(1, 4, 32, 32))


# ------------------------------------------------------------------------------------------- rss / normalise


def test_rss_and_normalize_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 9, dtype=torch.complex64, generator=g)
    r = rss(x)
    assert r.shape == (2, 8, 9) and r.dtype == torch.float32
    torch.testing.assert_close(r, torch.sqrt((x.abs() ** 2).sum(1)))
    torch.testing.assert_close(rss(x, dim=1), r)
    torch.testing.assert_close(rss(x.abs(), dim=-3), r)

    x[:, :, :2] = 0  # a zero region stays zero
    n = normalize_maps(x)
    p = (n.abs() ** 2).sum(1)
    torch.testing.assert_close(p[:, 2:], torch.ones_like(p[:, 2:]))
    assert (n[:, :, :2] == 0).all() and torch.isfinite(torch.view_as_real(n)).all()
    # normalised maps keep the per-pixel direction
    torch.testing.assert_close(n[:, :, 2:] * rss(x)[:, None, 2:], x[:, :, 2:])
