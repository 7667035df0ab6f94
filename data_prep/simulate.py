"""Simulate fastMRI-format multi-coil k-space from a real magnitude MR volume (NIfTI).

Per axial slice (after reorienting the volume to RAS with nibabel): the magnitude is resampled to the
chosen matrix on a square field of view, multiplied by a smooth random phase, by birdcage coil maps
(sigpy.mri.birdcage_maps, normalised so that max RSS = 1), transformed with the centred orthonormal
FFT, and complex Gaussian noise CN(0, sigma^2) is added to k-space. The SNR is defined on the noise-free
RSS image: SNR_dB = 20 log10(mean foreground |x| / sigma).

Slices are grouped into chunks of consecutive slices; each chunk becomes one file ("volume") and is
assigned to train / val / test by a repeating cycle. ``gap`` slices are dropped at every boundary
between different splits, so no test slice has an immediate neighbour (near-duplicate) in training.
Files load in ``fastmri.data.SliceDataset(challenge='multicoil')`` unchanged.

Low-resolution acquisitions (``lowres`` > 0, for view models): for every training chunk a second file in
``multicoil_lowres/`` holds a separate scan of the same slices at a lower resolution: the centred
(lowres * matrix)^2 block of k-space of its own realisation (new smooth phase, new noise of the same level
per k-space entry), i.e. the same field of view with larger voxels, as a low-resolution protocol gives.
Attribute ``full_matrix`` records the matrix of the full-resolution scans it pairs with.

Complex image volumes (h5, their own phase kept, split by volume): ``data_prep.simulate_h5``, which reuses
the coil maps, noise, SNR rule and writer defined here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mri_diffusion.atomic import atomic_write, atomic_write_text
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import fft2c, ifft2c
from mri_diffusion.physics.views import centre_crop

from .ismrmrd import make_header

SPLITS = {"T": "train", "V": "val", "X": "test"}


@dataclass(frozen=True)
class SimConfig:
    matrix: int = 128           # H = W of the simulated k-space
    coils: int = 8
    snr_db: float = 40.0        # 30 dB makes the RSS reference's noise bias dominate SSIM (see README)
    slice_step: int = 3         # take every n-th axial slice of the source volume
    min_tissue: float = 0.25    # keep slices whose tissue area is at least this fraction of the largest
    chunk: int = 5              # slices per output file
    gap: int = 2                # slices dropped at every split boundary
    cycle: str = "TTVTTX"       # split of successive chunks (T train, V val, X test)
    phase_strength: float = 1.0  # radians, peak of the smooth random phase
    amplitude: float = 1e-4     # image scale (fastMRI stores tiny absolute values)
    coil_radius: float = 1.1    # birdcage radius relative to the half field of view
    lowres: float = 0.5         # also write low-resolution acquisitions (k-space centre, this fraction of the
    #                             matrix, fresh phase and noise) of the training slices to multicoil_lowres/; 0: off
    seed: int = 0


def load_nifti_axial(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume as (Z, Y, X) float32 axial slices, anterior at the top of each image, plus voxel sizes (mm)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such NIfTI file")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
    except Exception as e:  # nibabel raises many types for bad files
        raise ValueError(f"{path}: cannot read as NIfTI ({e})") from None
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D magnitude volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: volume contains NaN/Inf")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    vol = np.transpose(data, (2, 1, 0))[:, ::-1, :]  # RAS (x, y, z) -> (z, y: anterior up, x)
    return np.ascontiguousarray(np.clip(vol, 0, None)), zooms


def resample_square(img: np.ndarray, spacing: tuple[float, float], matrix: int) -> tuple[np.ndarray, float]:
    """Pad the slice to a square FOV (10 % margin) and resample to matrix x matrix. Returns (image, FOV mm)."""
    from skimage.transform import resize

    (ny, nx), (dy, dx) = img.shape, spacing
    fov = 1.1 * max(ny * dy, nx * dx)
    py, px = int(round(fov / dy)), int(round(fov / dx))
    canvas = np.zeros((py, px), np.float32)
    oy, ox = (py - ny) // 2, (px - nx) // 2
    canvas[oy:oy + ny, ox:ox + nx] = img
    out = resize(canvas, (matrix, matrix), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, None).astype(np.float32), fov


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth random phase map (radians): low-pass random field with peak |phase| = strength."""
    H, W = shape
    k = np.zeros((H, W), np.complex128)
    c = 3
    k[H // 2 - c:H // 2 + c + 1, W // 2 - c:W // 2 + c + 1] = (
        rng.standard_normal((2 * c + 1, 2 * c + 1)) + 1j * rng.standard_normal((2 * c + 1, 2 * c + 1)))
    field = ifft2c(torch.from_numpy(k)).real.numpy()
    return (strength * field / (np.abs(field).max() + 1e-12)).astype(np.float32)


def coil_maps(coils: int, matrix: int | tuple[int, int], radius: float = 1.1) -> np.ndarray:
    """Birdcage receive maps (C, H, W) complex64 (``matrix`` = H = W, or (H, W)), scaled so that
    max_p sqrt(sum_c |S_c(p)|^2) = 1 (sigpy normalises the RSS to 1 at every pixel)."""
    import sigpy.mri

    H, W = (matrix, matrix) if np.isscalar(matrix) else matrix
    maps = sigpy.mri.birdcage_maps((coils, H, W), r=radius, nzz=coils).astype(np.complex64)
    return maps / rss(torch.from_numpy(maps)).max().numpy()


def complex_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """CN(0, sigma^2) samples of ``shape`` (complex128): E|n|^2 = sigma^2, sigma / sqrt(2) per real/imag part."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * (sigma / np.sqrt(2))


def noise_std_for_snr(mag: np.ndarray, snr_db: float, ref_max: float | None = None) -> float:
    """CN std per k-space entry sigma with SNR_dB = 20 log10(mean foreground mag / sigma).

    ``mag``: noise-free RSS (or magnitude) images, any shape; foreground: mag > 0.1 * ref_max (default
    mag.max()). With centred orthonormal FFTs sigma is also the per-pixel noise std of each coil image.
    """
    ref = float(mag.max()) if ref_max is None else ref_max
    return float(mag[mag > 0.1 * ref].mean() / 10 ** (snr_db / 20))


def select_slices(vol: np.ndarray, cfg: SimConfig) -> list[int]:
    """Indices of every ``slice_step``-th slice with enough tissue."""
    thresh = 0.1 * vol.max()
    area = (vol > thresh).reshape(vol.shape[0], -1).sum(1)
    keep = np.where(area >= cfg.min_tissue * area.max())[0]
    return list(range(int(keep[0]), int(keep[-1]) + 1, cfg.slice_step)) if keep.size else []


def assign_splits(indices: list[int], cfg: SimConfig) -> list[tuple[str, list[int]]]:
    """Chunks of ``chunk`` slices assigned by ``cycle``; ``gap`` slices dropped at split boundaries."""
    if not set(cfg.cycle) <= set(SPLITS) or not cfg.cycle:
        raise ValueError(f"cycle must use the letters T, V, X; got {cfg.cycle!r}")
    chunks: list[tuple[str, list[int]]] = []
    i, c, prev = 0, 0, None
    while i < len(indices):
        split = SPLITS[cfg.cycle[c % len(cfg.cycle)]]
        if prev is not None and split != prev:
            i += cfg.gap
        block = indices[i:i + cfg.chunk]
        if len(block) == cfg.chunk or (block and len(block) >= max(2, cfg.chunk // 2)):
            chunks.append((split, block))
        i += cfg.chunk
        c += 1
        prev = split
    return chunks


def simulate_slice(mag: np.ndarray, maps: np.ndarray, rng: np.random.Generator, cfg: SimConfig,
                   sigma: float) -> np.ndarray:
    """One slice: magnitude (H, W) -> noisy multi-coil k-space (C, H, W) complex64."""
    x = mag * np.exp(1j * smooth_phase(mag.shape, rng, cfg.phase_strength))
    k = fft2c(torch.from_numpy(maps * x[None])).numpy()
    return (k + complex_noise(k.shape, sigma, rng)).astype(np.complex64)


def write_volume(path: Path, kspace: np.ndarray, fov_mm: float | tuple[float, float], thickness_mm: float,
                 attrs: dict, overwrite: bool) -> None:
    """fastMRI multi-coil file: kspace (S, C, H, W), reconstruction_rss (S, H, W), header, attrs.

    ``fov_mm``: square field of view, or (along H, along W)."""
    S, C, H, W = kspace.shape
    fov = (fov_mm, fov_mm) if np.isscalar(fov_mm) else tuple(fov_mm)
    rss_image = rss(ifft2c(torch.from_numpy(kspace))).numpy().astype(np.float32)
    with atomic_write(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=kspace)
            f.create_dataset("reconstruction_rss", data=rss_image)
            f.create_dataset("ismrmrd_header", data=make_header((H, W), (H, W), fov, thickness_mm, C))
            f.attrs["max"] = float(rss_image.max())
            f.attrs["norm"] = float(np.linalg.norm(rss_image))
            for k, v in attrs.items():
                f.attrs[k] = v


def simulate(source: str | Path, out_dir: str | Path, cfg: SimConfig = SimConfig(), overwrite: bool = False,
             progress: bool = True) -> dict:
    """NIfTI -> ``out_dir/multicoil_{train,val,test}/*.h5`` plus ``simulation.json``. Returns the summary."""
    from tqdm import tqdm

    source, out_dir = Path(source), Path(out_dir)
    vol, zooms = load_nifti_axial(source)
    if vol.max() <= 0:
        raise ValueError(f"{source}: volume is all zero")
    vol = vol / vol.max()
    idx = select_slices(vol, cfg)
    chunks = assign_splits(idx, cfg)
    if not chunks:
        raise ValueError(f"{source}: no slices with tissue found (shape {vol.shape})")
    missing = [SPLITS[c] for c in set(cfg.cycle) if not any(sp == SPLITS[c] for sp, _ in chunks)]
    if missing:
        raise ValueError(f"{source}: only {len(idx)} usable slices, not enough for the {'/'.join(sorted(missing))} "
                         f"split(s) with chunk={cfg.chunk}, gap={cfg.gap}, slice_step={cfg.slice_step}; use a "
                         "smaller --slice-step or --chunk")
    maps = coil_maps(cfg.coils, cfg.matrix, cfg.coil_radius)
    stem = source.name.split(".")[0]
    pid = hashlib.sha256(stem.encode()).hexdigest()
    # noise level from the noise-free RSS of the whole selection: one sigma for the volume
    mags = {z: resample_square(vol[z], (zooms[1], zooms[0]), cfg.matrix)[0] * cfg.amplitude for z in idx}
    fov = resample_square(vol[idx[0]], (zooms[1], zooms[0]), cfg.matrix)[1]
    sigma = noise_std_for_snr(np.stack(list(mags.values())), cfg.snr_db, ref_max=cfg.amplitude)
    files = {"train": [], "val": [], "test": []}
    counters = {k: 0 for k in files}
    for split, block in tqdm(chunks, desc="simulate", unit="file", disable=not progress):
        name = f"{stem}_{split}_{counters[split]:03d}.h5"
        counters[split] += 1
        ks = []
        for z in block:
            rng = np.random.default_rng([cfg.seed, z])
            ks.append(simulate_slice(mags[z], maps, rng, cfg, sigma))
        attrs = {"acquisition": "AXT1", "patient_id": pid, "source": str(source),
                 "source_slices": np.asarray(block, np.int32), "noise_std": sigma}
        write_volume(out_dir / f"multicoil_{split}" / name, np.stack(ks), fov, zooms[2] * cfg.slice_step, attrs,
                     overwrite)
        files[split].append(name)
        if split == "train" and cfg.lowres > 0:
            lo = int(round(cfg.matrix * cfg.lowres))
            kl = []
            for z in block:
                rng = np.random.default_rng([cfg.seed, z, 1])  # an independent acquisition of slice z
                kl.append(centre_crop(simulate_slice(mags[z], maps, rng, cfg, sigma), (lo, lo)))
            lname = name.replace("_train_", "_lowres_")
            write_volume(out_dir / "multicoil_lowres" / lname, np.stack(kl), fov, zooms[2] * cfg.slice_step,
                         {**attrs, "full_matrix": np.asarray([cfg.matrix, cfg.matrix], np.int32)}, overwrite)
            files.setdefault("lowres", []).append(lname)
    summary = {"source": str(source), "config": asdict(cfg), "noise_std": sigma, "fov_mm": fov,
               "files": files, "slices": {s: [b for sp, b in chunks if sp == s] for s in ("train", "val", "test")}}
    atomic_write_text(out_dir / "simulation.json", json.dumps(summary, indent=2), overwrite=True)
    return summary
