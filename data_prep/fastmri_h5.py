"""Read, validate and write fastMRI ``.h5`` files (single- and multi-coil), slice by slice.

Layout (facebookresearch/fastMRI data README): ``kspace`` (S, H, W) single-coil or (S, C, H, W)
multi-coil complex64; ``reconstruction_rss`` / ``reconstruction_esc`` (S, h, w) float32 targets;
``mask`` (W,) on test files; ``ismrmrd_header`` XML bytes; attrs ``max``, ``norm``, ``acquisition``,
``patient_id`` (+ ``acceleration``, ``num_low_frequency`` on test files).

Extension (not in fastMRI, whose files carry no noise scan): an optional dataset ``noise`` (C, N) complex, N
noise-only samples per coil (an ISMRMRD noise acquisition), from which :func:`noise_covariance` estimates the
coil noise covariance that ``prep`` prewhitens with (``data_prep.mock_fastmri`` writes it on request).

Every problem raises ``DataError`` naming the file, key and shape. Submissions are written atomically
with key ``reconstruction`` (float32, same file name as the input).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from mri_diffusion.atomic import atomic_write
from mri_diffusion.types import DataError

from .ismrmrd import HeaderInfo, parse_header

#: Reference datasets in order of preference, the fastMRI convention: single-coil files hold both and are scored
#: on the ESC image, multi-coil files hold only the RSS image. ``evaluate`` and :func:`read_target` use this order.
TARGET_KEYS = ("reconstruction_esc", "reconstruction_rss")
#: The optional noise scan (C, N) complex (module doc).
NOISE_KEY = "noise"


def target_key(names, key: str | None = None) -> str | None:
    """The reference dataset among ``names`` (an open h5 file or its keys): ``key`` if given and present, else the
    first of :data:`TARGET_KEYS` present; None if there is none."""
    return next((k for k in ([key] if key else TARGET_KEYS) if k in names), None)


@dataclass
class Volume:
    """Metadata of one validated fastMRI file (k-space is read lazily, one slice at a time)."""

    path: Path
    num_slices: int
    num_coils: int  # 1 for single-coil files
    multicoil: bool
    shape: tuple[int, int]  # (H, W) of k-space
    header: HeaderInfo | None
    attrs: dict = field(default_factory=dict)
    mask: np.ndarray | None = None  # (W,) float32 for test files
    target_key: str | None = None
    noise_shape: tuple[int, int] | None = None  # (C, N) of the optional noise scan

    @property
    def recon_size(self) -> tuple[int, int]:
        """fastMRI reconstruction size (from reconSpace), with the FLAIR-203 rule for narrow k-space."""
        if self.header is not None:
            h, w = self.header.recon_size[:2]
        else:
            h, w = self.shape
        if self.shape[1] < w:  # fastMRI: k-space narrower than the recon size -> crop to a square
            h = w = self.shape[1]
        return min(h, self.shape[0]), min(w, self.shape[1])

    @property
    def name(self) -> str:
        return self.path.name


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        msg = str(e)
        hint = " (on a network file system try HDF5_USE_FILE_LOCKING=FALSE)" if re.search(r"\block", msg) else ""
        raise DataError(f"{path}: cannot open as HDF5: truncated or corrupt file ({msg}){hint}") from None


def open_volume(path: str | Path, expect: str | None = None) -> Volume:
    """Validate a fastMRI file without reading its k-space. ``expect`` in {None, 'multicoil', 'singlecoil'}."""
    path = Path(path)
    with _open(path) as f:
        if "kspace" not in f:
            raise DataError(f"{path}: missing dataset 'kspace' (keys: {sorted(f.keys())})")
        ks = f["kspace"]
        if ks.dtype.kind != "c":
            raise DataError(f"{path}: 'kspace' must be complex, got dtype {ks.dtype} shape {ks.shape}")
        if ks.ndim not in (3, 4):
            raise DataError(f"{path}: 'kspace' must be (slices, H, W) or (slices, coils, H, W), got shape {ks.shape}")
        multicoil = ks.ndim == 4
        if expect == "multicoil" and not multicoil:
            raise DataError(f"{path}: expected multi-coil k-space (slices, coils, H, W), got single-coil shape {ks.shape}")
        if expect == "singlecoil" and multicoil:
            raise DataError(f"{path}: expected single-coil k-space (slices, H, W), got multi-coil shape {ks.shape}")
        S, H, W = ks.shape[0], ks.shape[-2], ks.shape[-1]
        if S == 0 or H < 2 or W < 2:
            raise DataError(f"{path}: 'kspace' has an empty dimension, shape {ks.shape}")
        header = None
        if "ismrmrd_header" in f:
            try:
                header = parse_header(f["ismrmrd_header"][()], where=str(path))
            except (KeyError, ValueError) as e:
                warnings.warn(f"{e}; using the k-space shape for the reconstruction size")
        mask = None
        if "mask" in f:
            m = np.asarray(f["mask"][()]).astype(np.float32)
            if m.ndim != 1 or m.shape[0] != W:
                raise DataError(f"{path}: 'mask' shape {m.shape} does not match k-space width {W} (kspace {ks.shape})")
            if not np.all((m == 0) | (m == 1)):
                raise DataError(f"{path}: 'mask' values must be 0/1")
            if not m.any():
                raise DataError(f"{path}: 'mask' is all zero: it samples no k-space column (kspace {ks.shape})")
            mask = m
        tkey = target_key(f)
        if tkey is not None and f[tkey].shape[0] != S:
            raise DataError(f"{path}: '{tkey}' has {f[tkey].shape[0]} slices, k-space has {S}")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        C = ks.shape[1] if multicoil else 1
        noise_shape = None
        if NOISE_KEY in f:
            n = f[NOISE_KEY]
            if not isinstance(n, h5py.Dataset) or n.dtype.kind != "c" or n.ndim != 2 or n.shape[0] != C \
                    or n.shape[1] < 2 * C:
                raise DataError(f"{path}: '{NOISE_KEY}' must be a noise scan (coils, samples) complex with "
                                f"{C} coils and at least {2 * C} samples, got dtype {getattr(n, 'dtype', None)} shape "
                                f"{getattr(n, 'shape', None)} (kspace {ks.shape})")
            noise_shape = tuple(int(v) for v in n.shape)
        return Volume(path, S, C, multicoil, (H, W), header, attrs, mask, tkey, noise_shape)


def noise_covariance(vol: Volume) -> np.ndarray:
    """The coil noise covariance Psi = n n^H / N (C, C) complex128 of the file's noise scan (E[n n^H] per
    k-space entry: its diagonal is sigma_y^2 per coil); DataError if absent or not positive definite."""
    if vol.noise_shape is None:
        raise DataError(f"{vol.path}: no noise scan ('{NOISE_KEY}')")
    with _open(vol.path) as f:
        n = np.asarray(f[NOISE_KEY][()], dtype=np.complex128)
    if not np.all(np.isfinite(n)):
        raise DataError(f"{vol.path}: '{NOISE_KEY}' {n.shape} contains NaN/Inf")
    psi = n @ n.conj().T / n.shape[1]
    try:
        np.linalg.cholesky(psi)
    except np.linalg.LinAlgError:
        raise DataError(f"{vol.path}: '{NOISE_KEY}' {n.shape}: the coil noise covariance is not positive definite "
                        "(a dead or duplicated coil?)") from None
    return psi


def read_kspace_slice(vol: Volume, index: int) -> np.ndarray:
    """One slice as complex64 (C, H, W) (C = 1 for single-coil). Refuses NaN/Inf naming file and slice."""
    if not 0 <= index < vol.num_slices:
        raise DataError(f"{vol.path}: slice {index} out of range 0..{vol.num_slices - 1}")
    with _open(vol.path) as f:
        k = np.asarray(f["kspace"][index]).astype(np.complex64)
    if not vol.multicoil:
        k = k[None]
    if not np.all(np.isfinite(k)):
        bad = int(np.sum(~np.isfinite(k)))
        raise DataError(f"{vol.path}: 'kspace' slice {index} contains {bad} NaN/Inf values; refusing to reconstruct")
    return k


def is_empty_slice(k: np.ndarray) -> bool:
    return not np.any(k)


def iter_kspace(vol: Volume, max_slices: int | None = None, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (index, kspace (C, H, W)) slice by slice, slices ``start`` .. ``max_slices`` - 1; memory stays at
    one slice."""
    n = vol.num_slices if max_slices is None else min(vol.num_slices, max_slices)
    with _open(vol.path) as f:
        ds = f["kspace"]
        for i in range(start, n):
            k = np.asarray(ds[i]).astype(np.complex64, copy=False)
            if not vol.multicoil:
                k = k[None]
            if not np.all(np.isfinite(k)):
                raise DataError(f"{vol.path}: 'kspace' slice {i} contains NaN/Inf values; refusing to reconstruct")
            yield i, k


def read_target(path: str | Path, key: str | None = None) -> tuple[np.ndarray, str]:
    """The fully sampled target (S, h, w) float32 and its key (``key``, else the first of :data:`TARGET_KEYS`
    present); DataError if absent."""
    path = Path(path)
    with _open(path) as f:
        found = target_key(f, key)
        if found is None:
            raise DataError(f"{path}: no ground truth ('{key or ' / '.join(TARGET_KEYS)}' missing)")
        return np.asarray(f[found][()], dtype=np.float32), found


def list_h5(inputs, strict: bool = False, errors: list | None = None) -> list[Path]:
    """Expand files/folders to ``.h5`` files.

    An unreadable file inside a folder is skipped with a warning, or, when ``errors`` is a list, appended to it
    as ``(path, reason)`` for the caller to report (``recon`` lists every failed input and exits non-zero).
    A single file given directly that cannot be opened raises ``DataError`` (also appended when ``errors`` is
    given); ``strict`` raises for folder members too.
    """
    out: list[Path] = []
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        p = Path(item)
        if not p.exists():
            raise DataError(f"{p}: no such file or directory")
        members = [p] if p.is_file() else [c for c in sorted(p.iterdir()) if c.is_file() and not c.name.startswith(".")]
        for c in members:
            if c is not p and c.suffix != ".h5":
                warnings.warn(f"skipping {c}: not an .h5 file")
                continue
            try:
                _open(c).close()
            except DataError as e:
                if errors is not None and not strict:
                    errors.append((c, str(e)))
                    continue
                if strict or c is p:
                    raise
                warnings.warn(f"skipping {e}")
                continue
            out.append(c)
    return out


def _check_finite(name: str, arr: np.ndarray, where: Path) -> None:
    if not np.all(np.isfinite(arr)):
        bad = np.where(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))[0]
        raise DataError(f"{where}: refusing to write '{name}' with NaN/Inf (slices {bad[:5].tolist()})")


def write_reconstruction(path: str | Path, reconstruction: np.ndarray, extra: dict | None = None,
                         attrs: dict | None = None, overwrite: bool = False) -> Path:
    """fastMRI submission file: ``reconstruction`` float32 (S, H, W) (+ extra float32 datasets), atomically."""
    path = Path(path)
    recon = np.asarray(reconstruction, dtype=np.float32)
    if recon.ndim != 3:
        raise DataError(f"{path}: reconstruction must be (slices, H, W), got shape {recon.shape}")
    _check_finite("reconstruction", recon, path)
    extra = {k: np.asarray(v, dtype=np.float32) for k, v in (extra or {}).items()}
    for k, v in extra.items():
        _check_finite(k, v, path)
    with atomic_write(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=recon)
            for k, v in extra.items():
                f.create_dataset(k, data=v)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    return path


def read_cfl(base: str | Path) -> np.ndarray:
    """BART ``.cfl``/``.hdr`` pair -> complex64 array (column-major, trailing singleton dims dropped)."""
    base = Path(str(base).removesuffix(".cfl").removesuffix(".hdr"))
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    for p in (hdr, cfl):
        if not p.exists():
            raise DataError(f"{p}: no such file")
    lines = [ln for ln in hdr.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        dims = [int(v) for v in lines[0].split()]
    except (IndexError, ValueError):
        raise DataError(f"{hdr}: malformed BART header") from None
    n = int(np.prod(dims))
    data = np.fromfile(cfl, dtype=np.complex64)
    if data.size != n:
        raise DataError(f"{cfl}: expected {n} complex values for dims {dims}, found {data.size}")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.reshape(dims, order="F")
