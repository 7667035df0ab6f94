"""Shared fixtures: tiny fastMRI-format files made on the fly, and the real data in ../shared when present.

Anything a test needs from outside the repository (the real data in ../shared/data/real, Debian's chromium, an
installed package) is checked with ``require``: missing, the test is skipped on a developer machine and FAILS
when the environment variable CI is "true", so that CI cannot pass by skipping what it was meant to test.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

torch.set_flush_denormal(True)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def in_ci() -> bool:
    """True when the environment variable CI is "true" (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(what, reason: str):
    """Skip the calling test when ``what`` is missing, except under CI=true, where it fails instead.

    ``what``: a path (present if it exists) or any value (present if truthy). Returns ``what``. Call it in the
    test or fixture body (or at module level for a whole module).
    """
    ok = what.exists() if isinstance(what, Path) else bool(what)
    if not ok:
        if in_ci():
            pytest.fail(f"CI=true, and a test requirement is missing: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return what


def require_module(name: str):
    """``pytest.importorskip`` that fails under CI=true: the imported module."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, f"module {name!r} not importable ({e})")


def real_path(*parts) -> Path:
    p = REAL.joinpath(*parts)
    return require(p, f"real data not available: {p}")


def fft2c_np(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c_np(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def phantom(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth complex test image (ellipses with a smooth phase)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    img = np.zeros((h, w))
    for _ in range(6):
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        ry, rx = rng.uniform(0.15, 0.6, 2)
        img += rng.uniform(0.2, 1.0) * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    return (img * np.exp(1j * (0.8 * xx + 0.5 * yy ** 2))).astype(np.complex64)


def write_multicoil(path: Path, slices: int = 3, coils: int = 4, h: int = 72, w: int = 64, noise: float = 0.01,
                    header: bool = True, mask: np.ndarray | None = None, seed: int = 0) -> Path:
    """A small fastMRI multi-coil file (birdcage maps x phantom)."""
    import sigpy.mri

    from data_prep.ismrmrd import make_header

    rng = np.random.default_rng(seed)
    maps = sigpy.mri.birdcage_maps((coils, h, w)).astype(np.complex64)
    ks = []
    for s in range(slices):
        x = phantom(h, w, seed + s)
        k = fft2c_np(maps * x[None])
        k = k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
        ks.append(k.astype(np.complex64))
    ks = np.stack(ks)
    if mask is not None:
        ks = ks * mask.reshape(1, 1, 1, -1)
    rss = np.sqrt((np.abs(ifft2c_np(ks)) ** 2).sum(1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=ks)
        if mask is None:
            f.create_dataset("reconstruction_rss", data=rss)
            f.attrs["max"] = float(rss.max())
        else:
            f.create_dataset("mask", data=mask.astype(bool))
        if header:
            f.create_dataset("ismrmrd_header", data=make_header((h, w), (h, w), (200.0, 200.0), 3.0, coils))
        f.attrs["acquisition"] = "AXT1"
        f.attrs["patient_id"] = "test"
    return path


def make_prepared(root: Path, files: int = 2, slices: int = 3, h: int = 40, w: int = 48, shard_size: int = 4) -> Path:
    """A prepared set (acceleration 3, centre fraction 0.16) of ``files`` small multi-coil volumes ``vol_i.h5``
    under ``root``: sources in root/src, the set in root/set (returned)."""
    from data_prep.prepare import PrepConfig, prepare

    src = root / "src"
    src.mkdir()
    for i in range(files):
        write_multicoil(src / f"vol_{i}.h5", slices=slices, coils=4, h=h, w=w, noise=0.02, seed=10 * i)
    prepare([src], root / "set", PrepConfig(acceleration=3.0, center_fraction=0.16, shard_size=shard_size),
            progress=False)
    return root / "set"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many small ops: as fast, and immune to oversubscription on a busy
    2-core machine (results do not depend on it). Restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def mc_file(tmp_path) -> Path:
    d = tmp_path / "mc"
    d.mkdir()
    return write_multicoil(d / "vol_a.h5")


# --- devices ------------------------------------------------------------------------------------------------

def device_names() -> list[str]:
    """Devices of the ``device`` fixture: the comma-separated environment variable MRIDIFF_TEST_DEVICES, by
    default "cpu,cuda". A default device that is missing (no GPU) skips its tests; one that was asked for
    explicitly fails them (``benchmarks/gpu_check.py`` runs the device tests with MRIDIFF_TEST_DEVICES=cuda and
    also fails on any skip)."""
    return [d.strip() for d in os.environ.get("MRIDIFF_TEST_DEVICES", "cpu,cuda").split(",") if d.strip()]


@pytest.fixture(params=device_names())
def device(request) -> torch.device:
    """A torch device for device-parametrised tests (ids "cpu", "cuda"; see ``device_names``)."""
    dev = torch.device(request.param)
    if dev.type == "cuda" and not torch.cuda.is_available():
        if "MRIDIFF_TEST_DEVICES" in os.environ:
            pytest.fail("MRIDIFF_TEST_DEVICES asks for cuda, and CUDA is not available", pytrace=False)
        pytest.skip("no CUDA device")
    return dev
