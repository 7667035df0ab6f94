"""SVD coil compression: exact for low-rank coil sets, keeps noise white, plugs into recon."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from mri_diffusion.physics.compress import compress, compression_matrix

from .conftest import write_multicoil


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def test_rank_deficient_coils_compress_without_loss():
    base = crandn(3, 24, 20, seed=1)  # 3 independent coil images
    mix = crandn(8, 3, seed=2)        # 8 physical coils = linear mixtures of them
    k = torch.einsum("cb,bhw->chw", mix, base)
    mask = torch.zeros(1, 1, 20)
    mask[..., ::2] = 1
    U, kept = compression_matrix(k * mask, mask, 3)
    assert U.shape == (8, 3) and kept > 1 - 1e-6
    assert torch.allclose(U.conj().T @ U, torch.eye(3, dtype=U.dtype), atol=1e-5)
    kc = compress(k, U)
    # nothing lost: U U^H k = k (the coil signal lies in span(U)), on sampled and unsampled entries alike
    assert torch.allclose(torch.einsum("cv,vhw->chw", U, kc), k, atol=1e-4)


def test_compression_keeps_white_noise_white():
    n = crandn(6, 64, 64, seed=3) * 0.3  # CN per entry, per-channel std 0.3
    U, _ = compression_matrix(crandn(6, 64, 64, seed=4), torch.ones(1, 1, 64), 2)
    nc = compress(n, U).reshape(2, -1)
    cov = nc @ nc.conj().T / nc.shape[1]
    assert torch.allclose(cov, 2 * 0.09 * torch.eye(2, dtype=cov.dtype), atol=6 * 0.18 / 64)


def test_recon_with_virtual_coils(tmp_path):
    from mri_diffusion.cli import main

    f = write_multicoil(tmp_path / "v.h5", slices=1, coils=8, h=48, w=48, noise=0.005)
    outs = {}
    for vc in (0, 4):
        r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / f"o{vc}"), "--method", "sense",
                                      "--virtual-coils", str(vc), "-R", "2", "--quiet"])
        assert r.exit_code == 0, r.output
        import h5py

        with h5py.File(tmp_path / f"o{vc}" / "v.h5") as h:
            outs[vc] = h["reconstruction"][()]
            if vc:
                assert h.attrs["virtual_coils"] == 4 and h.attrs["coil_energy_kept"] > 0.9
    with __import__("h5py").File(f) as h:
        ref = h["reconstruction_rss"][()]
    psnr = {vc: 10 * np.log10(ref.max() ** 2 / np.mean((o - ref) ** 2)) for vc, o in outs.items()}
    assert psnr[4] > psnr[0] - 1.0, psnr  # 4 of 8 birdcage coils keep nearly all of the SENSE quality


def test_virtual_coil_maps_keep_the_physical_phase_reference():
    """ESPIRiT on unitarily rotated coils (n = C) with phase_ref = U[0] gives the same maps as on the physical
    coils, rotated: U S_v = S, so the coil-combined image (what the prior sees) is unchanged. Without the
    reference the combined image's phase follows virtual coil 0 instead."""
    import sigpy.mri

    from mri_diffusion.physics.calib import estimate_maps
    from mri_diffusion.physics.fft import fft2c
    from mri_diffusion.physics.masks import RandomMask

    from .conftest import phantom

    maps = torch.from_numpy(sigpy.mri.birdcage_maps((6, 48, 40)).astype(np.complex64))
    k = fft2c(maps * torch.from_numpy(phantom(48, 40))[None])
    mask = RandomMask(3.0, 0.25).sample((48, 40), 0)
    k = k * mask
    U, _ = compression_matrix(k, mask, 6)
    s_raw = estimate_maps(k, mask)
    s_ref = torch.einsum("cv,vhw->chw", U, estimate_maps(compress(k, U), mask, phase_ref=U[0]))
    s_noref = torch.einsum("cv,vhw->chw", U, estimate_maps(compress(k, U), mask))
    err = lambda s: float((s - s_raw).abs().max())  # noqa: E731
    assert err(s_ref) < 1e-3 < 0.1 < err(s_noref)
