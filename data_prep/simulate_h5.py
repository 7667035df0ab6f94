"""Complex image volumes (HDF5) -> fastMRI multi-coil k-space, one file per volume, split by volume.

Source layout (e.g. the SIAT T2 brain set, ``../shared/data/real/SOURCES.md`` section 9): ``image``
(N, H0, W0) complex, coil-combined images; ``volume`` (N,) integer, the volume (block of slices) each image
belongs to. Per volume, the slices keep their own phase (no synthetic phase) and go through:

1. ``image_crop`` (h0, w0): optional centre crop in the image domain (SIAT: 270 x 256 -> 256 x 256, the 7
   noise-only rows at each end of axis 1 of ``image``, as the source's README does);
2. birdcage coil maps S (C, h0, w0) (``simulate.coil_maps``, RSS = 1) and the centred orthonormal FFT:
   coil k-space F(S_c x) (C, h0, w0);
3. ``matrix`` (h, w): optional centre crop of that k-space, i.e. what a lower-resolution acquisition of
   the same field of view measures (larger voxels; not an image resize). Orthonormal FFTs make this a
   partial isometry: white noise keeps its per-pixel level, smooth image amplitudes grow by
   sqrt(h0 w0 / (h w)) (x2 for 256^2 -> 128^2);
4. complex Gaussian noise CN(0, sigma^2) per k-space entry, one sigma per volume from the SNR of the
   noise-free RSS image at the written matrix: SNR_dB = 20 log10(mean foreground RSS / sigma), foreground
   = RSS > 10 % of the volume's maximum (``simulate.noise_std_for_snr``, as for NIfTI sources). The
   source's own noise stays in the image and is not counted in ``noise_std``.

Output: ``out/multicoil_{train,val,test}/{stem}_vol{id:03d}.h5`` (``simulate.write_volume``: kspace (S, C,
h, w), reconstruction_rss (S, h, w) = the fastMRI recon size, ISMRMRD header, attrs incl. ``noise_std``,
``volume``, ``split``), ``split.json`` (volume ids per split, files, unused ids) and ``simulation.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mri_diffusion.atomic import atomic_write_text, check_writable
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import fft2c, ifft2c
from mri_diffusion.physics.views import centre_crop

from .fastmri_h5 import DataError
from .simulate import coil_maps, complex_noise, noise_std_for_snr, write_volume

SPLIT_NAMES = ("train", "val", "test")
#: The fixed split of the SIAT T2 brain set (20 blocks of 10 slices; split by block, never by slice).
SIAT_SPLITS = {"train": list(range(0, 14)), "val": [14, 15], "test": [16, 17, 18, 19]}


@dataclass(frozen=True)
class ComplexSimConfig:
    coils: int = 8
    snr_db: float = 40.0
    image_crop: tuple[int, int] | None = None  # (h0, w0) image-domain centre crop of the source; None: keep
    matrix: tuple[int, int] | None = None      # (h, w) k-space centre crop; None: keep the (cropped) matrix
    coil_radius: float = 1.1
    fov_mm: float = 220.0        # nominal field of view along H of the (cropped) source; pixels square
    thickness_mm: float = 5.0    # nominal slice thickness (header only)
    acquisition: str = "AXT2"
    seed: int = 0


def parse_ids(text: str) -> list[int]:
    """'0-13' | '14,15' | '0-3,7' | '' -> sorted unique non-negative ids."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{text!r}: expected volume ids such as 0-13 or 14,15 (got {part!r})")
        ids.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return sorted(ids)


class ComplexSource:
    """A validated complex-image h5 file; images are read one volume at a time."""

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path}: cannot open as HDF5 ({e})") from None
        with f:
            for key in ("image", "volume"):
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(f"{path}: missing dataset '{key}' (keys: {sorted(f.keys())}); expected "
                                    "'image' (N, H, W) complex and 'volume' (N,) integer")
            im, vol = f["image"], f["volume"]
            if im.ndim != 3 or im.dtype.kind != "c" or min(im.shape) < 1 or min(im.shape[1:]) < 2:
                raise DataError(f"{path}: 'image' must be (N, H, W) complex with H, W >= 2, got dtype {im.dtype} "
                                f"shape {im.shape}")
            if vol.ndim != 1 or vol.shape[0] != im.shape[0]:
                raise DataError(f"{path}: 'volume' must be (N,) = ({im.shape[0]},) like 'image' {im.shape}, got "
                                f"shape {vol.shape}")
            if vol.dtype.kind not in "iu":
                raise DataError(f"{path}: 'volume' must hold integer ids, got dtype {vol.dtype} shape {vol.shape}")
            self.volume = np.asarray(vol[()], np.int64)
            self.shape = tuple(int(s) for s in im.shape[1:])
        if self.volume.min() < 0:
            raise DataError(f"{path}: 'volume' ids must be >= 0, got {int(self.volume.min())}")

    def sha256(self) -> str:
        """sha256 of the source file (provenance, recorded in split.json)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()

    @property
    def ids(self) -> list[int]:
        return sorted(int(v) for v in np.unique(self.volume))

    def read(self, vid: int) -> tuple[np.ndarray, np.ndarray]:
        """Volume ``vid``: (indices (n,) into 'image' in file order, images (n, H0, W0) complex64)."""
        idx = np.flatnonzero(self.volume == vid)
        with h5py.File(self.path, "r") as f:
            x = np.asarray(f["image"][idx], dtype=np.complex64)
        bad = ~np.isfinite(x).all(axis=(1, 2))
        if bad.any():
            raise DataError(f"{self.path}: 'image' slice {int(idx[bad][0])} (volume {vid}) holds NaN/Inf")
        return idx, x


def check_splits(splits: dict[str, list[int]], source: ComplexSource) -> tuple[dict[int, str], list[int]]:
    """{volume id: split} for the ids named in ``splits``; refuses unknown split names, ids missing from the
    file and ids named in two splits. Returns (assignment, ids of the file in no split)."""
    assignment: dict[int, str] = {}
    for name, ids in splits.items():
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        for v in ids:
            if v in assignment:
                raise ValueError(f"volume {v} is in two splits: {assignment[v]} and {name}")
            assignment[v] = name
    missing = sorted(set(assignment) - set(source.ids))
    if missing:
        raise ValueError(f"{source.path}: split names volume(s) {missing} that are not in 'volume' "
                         f"(ids present: {source.ids})")
    if not assignment:
        raise ValueError("the split names no volume")
    return assignment, sorted(set(source.ids) - set(assignment))


def coil_kspace(x: np.ndarray, maps: np.ndarray, matrix: tuple[int, int]) -> np.ndarray:
    """Noise-free k-space: centre_crop(fft2c(S_c x), matrix). x (S, H, W), maps (C, H, W) -> (S, C, h, w) complex64."""
    k = fft2c(torch.from_numpy(maps)[None] * torch.from_numpy(x)[:, None])
    return centre_crop(k, matrix).contiguous().numpy()


def rss_image(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares image (S, h, w) float32 of k-space (S, C, h, w)."""
    return rss(ifft2c(torch.from_numpy(kspace))).numpy()


def _shape(opt: tuple[int, int] | None, within: tuple[int, int], what: str, source: Path) -> tuple[int, int]:
    if opt is None:
        return within
    if not (0 < opt[0] <= within[0] and 0 < opt[1] <= within[1]):
        raise ValueError(f"{source}: {what} {opt[0]}x{opt[1]} must fit inside {within[0]}x{within[1]} (crops only)")
    return int(opt[0]), int(opt[1])


def _check_outputs(out_dir: Path, targets: list[Path], stem: str, overwrite: bool) -> None:
    """Refuse existing outputs (unless ``overwrite``) and any file of this source from another run."""
    for p in [*targets, out_dir / "split.json", out_dir / "simulation.json"]:
        check_writable(p, overwrite)
    foreign = sorted(set(out_dir.glob(f"multicoil_*/{stem}_vol*.h5")) - set(targets))
    if foreign:
        raise FileExistsError(f"{out_dir}: holds {foreign[0]} (and {len(foreign) - 1} more) from a run with "
                              "another split; use a new --out or remove them (a volume must be in one split)")


def simulate_h5(source: str | Path, out_dir: str | Path, cfg: ComplexSimConfig = ComplexSimConfig(),
                splits: dict[str, list[int]] | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Complex-image h5 -> ``out_dir/multicoil_{split}/{stem}_vol{id:03d}.h5`` + split.json. Returns the summary."""
    from tqdm import tqdm

    src, out_dir = ComplexSource(source), Path(out_dir)
    splits = SIAT_SPLITS if splits is None else splits
    assignment, unused = check_splits(splits, src)
    in_shape = _shape(cfg.image_crop, src.shape, "image crop", src.path)
    out_shape = _shape(cfg.matrix, in_shape, "matrix (k-space centre crop)", src.path)
    stem = src.path.name.split(".")[0]
    targets = {v: out_dir / f"multicoil_{s}" / f"{stem}_vol{v:03d}.h5" for v, s in sorted(assignment.items())}
    _check_outputs(out_dir, list(targets.values()), stem, overwrite)
    maps = coil_maps(cfg.coils, in_shape, cfg.coil_radius)
    fov = (cfg.fov_mm, cfg.fov_mm * in_shape[1] / in_shape[0])  # k-space cropping keeps the field of view
    by_split = {s: sorted(v for v, t in assignment.items() if t == s) for s in SPLIT_NAMES}
    noise = {}
    for vid, path in tqdm(targets.items(), desc="simulate", unit="file", disable=not progress):
        idx, x = src.read(vid)
        clean = coil_kspace(centre_crop(x, in_shape), maps, out_shape)
        if not np.abs(clean).max() > 0:
            raise DataError(f"{src.path}: volume {vid} ('image' slices {idx.tolist()}) is all zero")
        sigma = noise_std_for_snr(rss_image(clean), cfg.snr_db)
        k = np.stack([c + complex_noise(c.shape, sigma, np.random.default_rng([cfg.seed, vid, int(i)]))
                      for c, i in zip(clean, idx)]).astype(np.complex64)
        attrs = {"acquisition": cfg.acquisition, "patient_id": hashlib.sha256(f"{stem}/{vid}".encode()).hexdigest(),
                 "source": str(src.path), "source_slices": idx.astype(np.int32), "volume": vid,
                 "split": assignment[vid], "split_json": json.dumps(by_split), "noise_std": sigma,
                 "snr_db": cfg.snr_db, "source_matrix": np.asarray(src.shape, np.int32),
                 "image_crop": np.asarray(in_shape, np.int32)}
        write_volume(path, k, fov, cfg.thickness_mm, attrs, overwrite)
        noise[vid] = sigma
    files = {s: [targets[v].name for v in by_split[s]] for s in SPLIT_NAMES}
    split = {"source": str(src.path), "source_sha256": src.sha256(), "by_volume": by_split, "unused_volumes": unused, "files": files}
    summary = {**split, "config": asdict(cfg), "matrix": list(out_shape), "image_crop": list(in_shape),
               "fov_mm": list(fov), "noise_std": {str(v): s for v, s in noise.items()},
               "slices": {s: int(sum((src.volume == v).sum() for v in by_split[s])) for s in SPLIT_NAMES}}
    atomic_write_text(out_dir / "split.json", json.dumps(split, indent=2), overwrite=overwrite)
    atomic_write_text(out_dir / "simulation.json", json.dumps(summary, indent=2), overwrite=overwrite)
    return summary
