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


def _write_h5(path: Path, arrays: dict, compress: bool = False) -> tuple[str, int]:
    """One shard, atomically; returns its sha256 and size in bytes."""
    with atomic_write(path, overwrite=True) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            for key, value in arrays.items():
                if key == "ids":
                    f.create_dataset(key, data=np.asarray(value, dtype=object), dtype=h5py.string_dtype("utf-8"),
                                     track_times=False)
                elif compress and key in COMPRESSED:
                    f.create_dataset(key, data=value, track_times=False, chunks=(1, *value.shape[1:]),
                                     compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
                else:
                    f.create_dataset(key, data=value, track_times=False)
    return _sha256(path), path.stat().st_size


def write_shard(out_dir: Path, index: int, rows: list[dict], with_targets: bool,
                compress: bool = False) -> tuple[dict, dict | None]:
    """Write shards/<name> (and targets/<name>); targets first so a listed shard always has its target.
    ``compress``: gzip the datasets in :data:`COMPRESSED` (h5py decompresses them transparently on reading)."""
    name = shard_name(index)
    ids = [r["id"] for r in rows]
    target_entry = None
    if with_targets:
        sha, size = _write_h5(out_dir / TARGET_DIR / name, {
            "target": np.stack([r["target"] for r in rows]).astype(np.complex64),
            "rss": np.stack([r["rss"] for r in rows]).astype(np.float32), "ids": ids})
        target_entry = {"name": name, "num_slices": len(rows), "sha256": sha, "bytes": size}
    sha, size = _write_h5(out_dir / SHARD_DIR / name, {
        "kspace": np.stack([r["kspace"] for r in rows]).astype(np.complex64),
        "mask": np.stack([r["mask"] for r in rows]).astype(np.float32),
        "density": np.stack([r["density"] for r in rows]).astype(np.float32),
        "maps": np.stack([r["maps"] for r in rows]).astype(np.complex64),
        "noise_std": np.asarray([r["noise_std"] for r in rows], np.float32),
        "scale": np.asarray([r["scale"] for r in rows], np.float32), "ids": ids}, compress)
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
