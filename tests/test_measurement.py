"""The one measurement model (mri_diffusion.measurement): what prep and recon both call for every slice."""

import numpy as np
import pytest
import torch

from mri_diffusion.measurement import MeasurementModel, choose_mask, estimate_noise_std
from mri_diffusion.physics.masks import RandomMask
from mri_diffusion.physics.normalize import acs_scale
from mri_diffusion.types import DataError

from .conftest import fft2c_np, phantom


def _slice(C=4, H=48, W=40, sigma=0.01, seed=0):
    import sigpy.mri

    rng = np.random.default_rng(seed)
    maps = sigpy.mri.birdcage_maps((C, H, W)).astype(np.complex64)
    k = fft2c_np(maps * phantom(H, W, seed)[None])
    k = k + sigma / np.sqrt(2) * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    return torch.from_numpy(k.astype(np.complex64))


def test_noise_level_given_from_the_file_or_estimated():
    k = _slice(sigma=0.1)
    mask = RandomMask(2.0, 0.2).sample(tuple(k.shape[-2:]), seed=1)
    given = MeasurementModel(noise_std=0.02).condition(k, mask, attrs={"noise_std": 0.5})
    filed = MeasurementModel().condition(k, mask, attrs={"noise_std": 0.5})
    est = MeasurementModel().condition(k, mask, attrs={})
    ignored = MeasurementModel(use_file_noise_std=False).condition(k, mask, attrs={"noise_std": 0.5})
    scale = acs_scale(k * mask, mask)
    assert given.scale == filed.scale == est.scale == scale
    assert given.noise_std == pytest.approx(0.02 / scale) and given.noise_source == "config"
    assert filed.noise_std == pytest.approx(0.5 / scale) and filed.noise_source == "file attribute"
    assert est.noise_source == ignored.noise_source == "estimated" and est.noise_std == ignored.noise_std
    assert est.noise_std * scale == pytest.approx(0.1, rel=0.3)  # the true level, from measured entries only
    assert torch.equal(est.kspace, (k * mask + 0.0) / scale) and est.maps.shape == k.shape
    off = MeasurementModel(noise=False, maps=False).condition(k, mask)
    assert np.isnan(off.noise_std) and off.noise_source == "not used" and bool((off.maps == 1).all())


def test_failures_are_data_errors_naming_the_slice():
    k = _slice()
    H, W = k.shape[-2:]
    mask = RandomMask(2.0, 0.2).sample((H, W), seed=1)
    padded = k.clone()
    padded[:, :6] = 0
    padded[:, -6:] = 0
    with pytest.raises(DataError, match="f.h5: slice 3: cannot estimate the noise level"):
        MeasurementModel().condition(padded, mask, where="f.h5: slice 3")
    assert np.isnan(estimate_noise_std(padded * mask, mask))
    edge = torch.zeros(1, 1, W)
    edge[..., :4] = 1
    with pytest.raises(DataError, match="f.h5: slice 0: .*no signal in the k-space centre lines that my mask samples"):
        MeasurementModel().condition(k, edge, where="f.h5: slice 0", mask_name="my mask")
    narrow = torch.zeros(1, 1, W)
    narrow[..., W // 2 - 1:W // 2 + 2] = 1
    with pytest.raises(DataError, match="slice 1: only 3 fully sampled centre lines"):
        MeasurementModel().condition(k, narrow, where="f.h5: slice 1")


def test_compression_keeps_the_noise_level_and_physical_phase_reference():
    k = _slice(C=6)
    mask = RandomMask(2.0, 0.2).sample(tuple(k.shape[-2:]), seed=2)
    full = MeasurementModel().condition(k, mask, attrs={"noise_std": 0.01})
    vc = MeasurementModel(virtual_coils=3).condition(k, mask, attrs={"noise_std": 0.01})
    assert vc.kspace.shape[0] == vc.maps.shape[0] == 3 and 0.9 < vc.coil_energy_kept <= 1
    assert vc.noise_std == full.noise_std and vc.scale == full.scale
    # the coil-combined image keeps the phase of physical coil 0 (as in training), not that of virtual coil 0
    from mri_diffusion.physics.fft import ifft2c

    combined = [torch.sum(m.maps.conj() * ifft2c(m.kspace), 0) for m in (full, vc)]
    fg = combined[0].abs() > 0.3 * combined[0].abs().max()
    assert float((combined[1] * combined[0].conj())[fg].angle().abs().median()) < 0.05
    assert bool((full.maps[0].angle().abs() < 1e-4).all())  # S_0 real: coil 0 is the phase reference


def test_choose_mask_sources():
    sampler = RandomMask(4.0)
    own = np.zeros(16, np.float32)
    own[6:10] = 1
    m, src = choose_mask((8, 16), sampler, 5)
    assert src == "retrospective" and torch.equal(m, sampler.sample((8, 16), seed=5))
    m, src = choose_mask((8, 16), sampler, 5, own)
    assert src == "file" and m.reshape(-1).tolist() == own.tolist()
    m, src = choose_mask((8, 16), sampler, 5, own, use_file_mask=False)
    assert src == "retrospective x file" and torch.equal(m, sampler.sample((8, 16), seed=5) * torch.from_numpy(own))
