"""Small fastMRI-like multi-coil files of mixed geometry, for tests and benchmarks (real fastMRI files are not here).

A real fastMRI multi-coil folder mixes: readout oversampling (k-space (slices, coils, 2h, W); the reconstruction
is the h x w centre of the image), phase-encode widths W (the phase field of view at one pixel size: 368, 372,
396 ... for a 320 x 320 reconstruction) and coil counts. A mock file has exactly that layout
(facebookresearch/fastMRI data README; ``fastmri.data.SliceDataset(challenge='multicoil')`` loads it and
``fastmri.data.transforms`` run on it, ``tests/test_fastmri_folder.py``):

- ``kspace`` (S, C, H, W) complex64 with H = ``readout_oversampling`` x h;
- ``reconstruction_rss`` (S, h, w) float32: the RSS image of the (noisy) k-space, centre-cropped to the recon
  size (fastMRI's target; even sizes make the crop fastMRI's ``center_crop``); absent when the file has a mask;
- ``ismrmrd_header``: encodedSpace matrixSize (H, W), reconSpace (h, w), fields of view (encoded = recon x H/h
  along the readout, x W/w along the phase encode: one pixel size), encodingLimits centred on W // 2;
- attrs ``acquisition``, ``max``, ``norm``, ``patient_id`` (and ``mock_fastmri``: the settings as JSON);
- optional ``mask`` (W,) (an undersampled file, k-space zero off the mask, no target);
- optional ``noise`` (C, N) complex64: a noise-only scan with the k-space noise's coil covariance (an
  extension: fastMRI files carry none; ``prep`` prewhitens with it).

Object: the image (h, w) (real anatomy from a complex-image h5 such as the SIAT T2 set, ``simulate_h5`` layout,
brought to (h, w) by a k-space centre crop/pad, i.e. the same field of view; or a smooth phantom) placed at the
centre of the (H, W) field of view; birdcage coils (``simulate.coil_maps`` on a square grid, the coils at
``coil_radius`` x the object's half field of view, cropped to (H, W)); noise CN(0, sigma^2) per entry at
``snr_db`` (``simulate.noise_std_for_snr`` on the noise-free RSS in the recon crop), its coils correlated by
``coil_correlation`` (0: white).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mri_diffusion.atomic import atomic_write, check_writable
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import fft2c, ifft2c
from mri_diffusion.physics.views import centre_crop, centre_slices

from .ismrmrd import make_header
from .simulate import coil_maps, complex_noise, noise_std_for_snr


@dataclass(frozen=True)
class MockConfig:
    recon: tuple[int, int] = (128, 128)       # reconSpace (h, w): the object's field of view
    readout_oversampling: int = 2             # k-space rows H = this x h
    widths: tuple[int, ...] = (128, 136, 144)  # phase-encode widths W, cycled over the files
    coils: tuple[int, ...] = (6, 8, 12)       # coil counts, cycled over the files
    snr_db: float = 30.0
    coil_correlation: float = 0.0             # 0: white noise; > 0: correlated coil noise
    noise_scan: bool = False                  # write the 'noise' dataset
    noise_samples: int = 256
    coil_radius: float = 1.1                  # birdcage radius / the object's half field of view
    fov_mm: float = 220.0                     # object field of view along the readout (header only)
    acquisition: str = "AXT2"
    seed: int = 0

    def geometry(self, i: int) -> tuple[int, int]:
        """(width, coils) of the i-th file."""
        return int(self.widths[i % len(self.widths)]), int(self.coils[i % len(self.coils)])


def phantom(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth complex object (h, w): random ellipses inside the field of view, a smooth phase."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    img = np.zeros((h, w))
    img[(yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1] = 0.3
    for _ in range(8):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        ry, rx = rng.uniform(0.05, 0.35, 2)
        img += rng.uniform(0.1, 0.7) * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    img *= (yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1
    return (img * np.exp(1j * (0.6 * xx + 0.4 * yy ** 2 + rng.uniform(-0.5, 0.5)))).astype(np.complex64)


def to_matrix(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Images (..., h0, w0) -> (..., h, w) over the same field of view: k-space centre crop / zero-pad."""
    k = fft2c(torch.from_numpy(np.ascontiguousarray(x, dtype=np.complex64)))
    return ifft2c(_fit(k, shape)).numpy()


def _fit(a, shape: tuple[int, int]):
    """Centre crop or zero-pad the last two axes of a tensor to ``shape`` (fftshift-consistent centres)."""
    for axis, n in ((-2, shape[0]), (-1, shape[1])):
        m = a.shape[axis]
        if n < m:
            a = a.narrow(axis, centre_slices(m, n).start, n)
        elif n > m:
            size = list(a.shape)
            size[axis] = n
            out = a.new_zeros(size)
            out.narrow(axis, centre_slices(n, m).start, m).copy_(a)
            a = out
    return a


def mock_maps(coils: int, matrix: tuple[int, int], recon: tuple[int, int], radius: float) -> np.ndarray:
    """Birdcage maps (C, H, W) for the (H, W) field of view, coils at ``radius`` x the object's half size."""
    side = max(matrix)
    r = (radius * max(recon) / 2 + 0.25) / (side / 2)  # + a quarter pixel: no coil sits exactly on a pixel
    maps = np.ascontiguousarray(centre_crop(coil_maps(coils, side, r), matrix))
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"coil maps for {coils} coils on {matrix} are not finite (a coil on a pixel); change "
                         f"coil_radius {radius}")
    return maps


def noise_mixing(coils: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """L (C, C) with L L^H the coil noise correlation (unit diagonal): white noise n -> L n."""
    if correlation <= 0:
        return np.eye(coils, dtype=np.complex128)
    g = (rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))) / np.sqrt(2 * coils)
    a = np.eye(coils) + correlation * g
    d = np.sqrt(np.real(np.sum(np.abs(a) ** 2, axis=1)))
    return a / d[:, None]


def write_mock_file(path: str | Path, images: np.ndarray, width: int, coils: int, cfg: MockConfig = MockConfig(),
                    seed: int = 0, mask: np.ndarray | None = None, overwrite: bool = False,
                    patient: str | None = None) -> Path:
    """One fastMRI-like file from object images (S, h, w) complex at ``cfg.recon`` (module doc). Returns the path."""
    path = Path(path)
    h, w = cfg.recon
    if images.ndim != 3 or tuple(images.shape[1:]) != (h, w):
        raise ValueError(f"images must be (slices, {h}, {w}) at the recon size, got {images.shape}")
    H, W = cfg.readout_oversampling * h, int(width)
    rng = np.random.default_rng([cfg.seed, seed])
    maps = torch.from_numpy(mock_maps(coils, (H, W), (h, w), cfg.coil_radius))
    x = _fit(torch.from_numpy(images.astype(np.complex64)), (H, W))
    clean = fft2c(maps[None] * x[:, None]).numpy()
    sigma = noise_std_for_snr(centre_crop(rss(ifft2c(torch.from_numpy(clean))).numpy(), (h, w)), cfg.snr_db)
    mix = noise_mixing(coils, cfg.coil_correlation, rng)
    noise = np.einsum("dc,schw->sdhw", mix, complex_noise(clean.shape, sigma, rng))
    k = (clean + noise).astype(np.complex64)
    if mask is not None:
        mask = np.asarray(mask, np.float32).reshape(-1)
        if mask.shape != (W,):
            raise ValueError(f"mask must be ({W},), got {mask.shape}")
        k = k * mask.astype(np.complex64)
    target = centre_crop(rss(ifft2c(torch.from_numpy(k))).numpy(), (h, w)).astype(np.float32)
    settings = {**asdict(cfg), "width": W, "num_coils": coils, "noise_std": sigma, "file_seed": seed}
    with atomic_write(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=k)
            if mask is None:
                f.create_dataset("reconstruction_rss", data=target)
            else:
                f.create_dataset("mask", data=mask.astype(bool))
            fov = (cfg.fov_mm * H / h, cfg.fov_mm * W / w)
            f.create_dataset("ismrmrd_header", data=make_header((H, W), (h, w), fov, 5.0, coils,
                                                                system="mri-diffusion mock fastMRI"))
            if cfg.noise_scan:
                n = mix @ complex_noise((coils, cfg.noise_samples), sigma, rng)
                f.create_dataset("noise", data=n.astype(np.complex64))
            f.attrs["acquisition"] = cfg.acquisition
            f.attrs["max"] = float(target.max())
            f.attrs["norm"] = float(np.linalg.norm(target))
            f.attrs["patient_id"] = hashlib.sha256((patient or path.stem).encode()).hexdigest()
            f.attrs["mock_fastmri"] = json.dumps(settings)
    return path


def mock_folder(out_dir: str | Path, cfg: MockConfig = MockConfig(), *, source: str | Path | None = None,
                volumes: list[int] | None = None, files: int = 3, slices: int = 4, image_crop: tuple[int, int] | None
                = (256, 256), overwrite: bool = False, progress: bool = False) -> dict:
    """Write mock files into ``out_dir``: one per source volume (``source``: complex-image h5 with 'image' and
    'volume', e.g. the SIAT T2 set; ``volumes``: the ids, default all; ``image_crop``: image-domain centre crop
    first), else ``files`` phantom files of ``slices`` slices. File i gets ``cfg.geometry(i)``. Returns the
    settings and per-file geometry (each file also carries its settings in the attr ``mock_fastmri``; the folder
    holds only the .h5 files, as fastMRI's ``SliceDataset`` expects)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if source is not None:
        from .simulate_h5 import ComplexSource

        src = ComplexSource(source)
        ids = src.ids if volumes is None else list(volumes)
        unknown = sorted(set(ids) - set(src.ids))
        if unknown:
            raise ValueError(f"{source}: volume(s) {unknown} not in 'volume' (ids: {src.ids})")
        stem = Path(source).name.split(".")[0]
        jobs = [(f"{stem}_vol{v:03d}.h5", v) for v in ids]
    else:
        jobs = [(f"mock_{i:03d}.h5", i) for i in range(files)]
    paths = [out_dir / name for name, _ in jobs]
    for p in paths:
        check_writable(p, overwrite)
    listing = []
    for i, ((name, key), path) in enumerate(tqdm(list(zip(jobs, paths)), desc="mock", unit="file",
                                                 disable=not progress)):
        if source is not None:
            _, x = src.read(key)
            if image_crop is not None:
                x = centre_crop(x, image_crop)
            x = to_matrix(x, cfg.recon)
        else:
            x = np.stack([phantom(cfg.recon, 1000 * key + s) for s in range(slices)])
        width, coils = cfg.geometry(i)
        write_mock_file(path, x, width, coils, cfg, seed=key, overwrite=overwrite, patient=f"{name}")
        listing.append({"file": name, "slices": int(x.shape[0]), "coils": coils,
                        "kspace": [cfg.readout_oversampling * cfg.recon[0], width], "source_key": int(key)})
    return {"config": asdict(cfg), "source": None if source is None else str(source), "files": listing}
