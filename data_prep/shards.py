"""The shard files of a prepared set and the state that lets an interrupted ``prep`` resume.

Shards (and their targets) are written atomically, targets first, so a shard listed in
``manifest.partial.json`` always has its target; the partial manifest records the finished shards, the cursor
(file, slice) after each one and the skipped slices. A re-run with the same configuration hash continues after
the last shard whose files are present with their recorded sizes.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mri_diffusion.atomic import atomic_write
from mri_diffusion.data import FORMAT_VERSION, MANIFEST, PARTIAL_MANIFEST, SHARD_DIR, TARGET_DIR, shard_name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Datasets gzip-compressed when a set is written with ``compress`` (lossless, one chunk per slice so that reading
#: a slice decompresses only that slice): the masked k-space is mostly zeros (unsampled columns).
COMPRESSED = ("kspace",)
GZIP_LEVEL = 1


@dataclass(frozen=True)
class Chunk:
    """One slice of a compressed dataset, encoded where it was computed (a ``prep`` worker): the bytes of an HDF5
    chunk with the shuffle + deflate filters (what h5py's ``shuffle=True, compression='gzip'`` stores), written
    as they are (``write_direct_chunk``), so that the parent process only copies bytes."""

    data: bytes
    shape: tuple[int, ...]
    dtype: str


def encode_chunk(a: np.ndarray) -> Chunk:
    """Byte-shuffle (element size) then deflate (zlib, ``GZIP_LEVEL``) one slice."""
    a = np.ascontiguousarray(a)
    shuffled = a.view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()
    return Chunk(zlib.compress(shuffled, GZIP_LEVEL), tuple(a.shape), a.dtype.str)


def _write_rows(f: h5py.File, key: str, values: list, dtype) -> None:
    """Dataset ``key`` (N, ...) from per-slice values (arrays or :class:`Chunk`), slice by slice (no stacked copy)."""
    if isinstance(values[0], Chunk):
        shape = values[0].shape
        ds = f.create_dataset(key, shape=(len(values), *shape), dtype=np.dtype(values[0].dtype), track_times=False,
                              chunks=(1, *shape), compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
        for j, c in enumerate(values):
            if c.shape != shape:
                raise ValueError(f"'{key}': slice {j} has shape {c.shape}, slice 0 {shape}")
            ds.id.write_direct_chunk((j,) + (0,) * len(shape), c.data)
        return
    first = np.asarray(values[0])
    ds = f.create_dataset(key, shape=(len(values), *first.shape), dtype=dtype, track_times=False)
    for j, v in enumerate(values):
        ds[j] = np.asarray(v, dtype=dtype)


def _write_h5(path: Path, datasets: dict) -> tuple[str, int]:
    """One shard, atomically, from {key: (per-slice values, dtype)} and 'ids'; returns its sha256 and size."""
    with atomic_write(path, overwrite=True) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            for key, value in datasets.items():
                if key == "ids":
                    f.create_dataset(key, data=np.asarray(value, dtype=object), dtype=h5py.string_dtype("utf-8"),
                                     track_times=False)
                else:
                    _write_rows(f, key, *value)
    return _sha256(path), path.stat().st_size


def write_shard(out_dir: Path, index: int, rows: list[dict], with_targets: bool) -> tuple[dict, dict | None]:
    """Write shards/<name> (and targets/<name>); targets first so a listed shard always has its target.
    A row's 'kspace' may be a :class:`Chunk` (compressed in the worker; h5py decompresses it on reading)."""
    name = shard_name(index)
    ids = [r["id"] for r in rows]
    col = lambda key, dtype: ([r[key] for r in rows], dtype)  # noqa: E731
    target_entry = None
    if with_targets:
        sha, size = _write_h5(out_dir / TARGET_DIR / name, {
            "target": col("target", np.complex64), "rss": col("rss", np.float32), "ids": ids})
        target_entry = {"name": name, "num_slices": len(rows), "sha256": sha, "bytes": size}
    sha, size = _write_h5(out_dir / SHARD_DIR / name, {
        "kspace": col("kspace", np.complex64), "mask": col("mask", np.float32), "density": col("density", np.float32),
        "maps": col("maps", np.complex64), "noise_std": col("noise_std", np.float32),
        "scale": col("scale", np.float32), "ids": ids})
    return {"name": name, "num_slices": len(rows), "sha256": sha, "bytes": size, "ids": ids}, target_entry


def config_hash(config: dict, sources: list[dict]) -> str:
    blob = json.dumps({"config": config, "sources": sources}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def clear(out_dir: Path) -> None:
    """Remove a previous prepared set in out_dir (only files this module writes)."""
    for name in (MANIFEST, PARTIAL_MANIFEST):
        (out_dir / name).unlink(missing_ok=True)
    pattern = re.compile(r"shard_\d{5}\.h5")
    for sub in (SHARD_DIR, TARGET_DIR):
        d = out_dir / sub
        if d.is_dir():
            for p in d.iterdir():
                if pattern.fullmatch(p.name):
                    p.unlink()


def resume_state(out_dir: Path, config_hash: str, overwrite: bool) -> dict | None:
    """The partial state to continue from, or None to start afresh (after clearing out_dir)."""
    if (out_dir / MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir / MANIFEST} exists (a finished prepared set); pass --overwrite to "
                                  f"replace it")
        clear(out_dir)
        return None
    partial = out_dir / PARTIAL_MANIFEST
    if not partial.exists():
        clear(out_dir)
        return None
    try:
        state = json.loads(partial.read_text())
    except json.JSONDecodeError:
        state = {}
    if state.get("config_hash") != config_hash or state.get("format_version") != FORMAT_VERSION:
        if not overwrite:
            raise ValueError(f"{out_dir} holds an interrupted preparation with a different configuration or "
                             f"inputs (config_hash {str(state.get('config_hash'))[:12]}, now {config_hash[:12]}); "
                             f"pass --overwrite to start again")
        clear(out_dir)
        return None
    # keep the prefix of shards whose files are present (written atomically: present = complete; the size
    # check catches replaced files without re-hashing a large set)
    good = 0
    for i, s in enumerate(state["shards"]):
        pairs = [(out_dir / SHARD_DIR / s["name"], s)]
        if state["target_shards"]:
            pairs.append((out_dir / TARGET_DIR / s["name"], state["target_shards"][i]))
        ok = all(p.exists() and p.stat().st_size == e["bytes"] for p, e in pairs)
        if not ok:
            break
        good = i + 1
    if good < len(state["shards"]):
        warnings.warn(f"{out_dir}: shard {good} of the interrupted run is missing or changed; redoing from there")
        cursor = state["cursors"][good - 1] if good else None
        state.update(shards=state["shards"][:good], target_shards=state["target_shards"][:good],
                     cursors=state["cursors"][:good],
                     skipped=[s for s in state["skipped"] if cursor is not None and tuple(s["pos"]) <= tuple(cursor)])
    return state
