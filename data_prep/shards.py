"""The shard files of a prepared set and the state that lets an interrupted ``prep`` resume.

A shard holds consecutive slices of ONE file (at most ``shard_size``), so the shards are fixed by the inputs and
the configuration alone: shard k is task k of :func:`shard_tasks`, whichever worker process writes it
(``--workers N`` writes the set of one worker, bit for bit). A worker streams its slices into the shard
(:class:`ShardWriter`: one slice in memory, per-slice HDF5 chunks) and writes it atomically, targets first, so a
shard listed in ``manifest.partial.json`` always has its target. The parent records finished tasks in task order:
the partial manifest holds the finished shards (each with its task), the number of finished tasks and the skipped
slices. A re-run with the same configuration hash continues after the last shard whose files are present with
their recorded sizes. A task whose slices are all skipped writes no shard (its name stays unused).
"""

from __future__ import annotations

import contextlib
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


def shard_tasks(used_slices: list[int], shard_size: int) -> list[tuple[int, int, int, int]]:
    """(task = shard index, file index, start, stop): each file's used slices in runs of ``shard_size``."""
    out = []
    for fi, n in enumerate(used_slices):
        for a in range(0, n, shard_size):
            out.append((len(out), fi, a, min(a + shard_size, n)))
    return out


MAIN_KEYS = {"kspace": np.complex64, "mask": np.float32, "density": np.float32, "maps": np.complex64}
TARGET_KEYS = {"target": np.complex64, "rss": np.float32}


class ShardWriter:
    """Streams rows (one conditioned slice each) into shard ``index`` (and its target shard), atomically.

    Use as a context manager; the files are created at the first row (no row: no file). Per-slice arrays go to
    chunked datasets (one chunk per slice, so that reading a slice reads one chunk); a row's 'kspace' may be a
    :class:`Chunk` compressed by the caller. On success ``entry`` / ``target_entry`` describe the files."""

    def __init__(self, out_dir: Path, index: int, capacity: int, with_targets: bool):
        self.out_dir, self.index, self.capacity, self.with_targets = Path(out_dir), index, capacity, with_targets
        self.name = shard_name(index)
        self.ids: list[str] = []
        self.small: dict[str, list[float]] = {"noise_std": [], "scale": []}
        self.entry = self.target_entry = None
        self._files: dict[str, h5py.File] = {}

    def __enter__(self):
        self._stack = contextlib.ExitStack().__enter__()
        return self

    def _open(self, row: dict) -> None:
        groups = {SHARD_DIR: MAIN_KEYS} if not self.with_targets else {SHARD_DIR: MAIN_KEYS, TARGET_DIR: TARGET_KEYS}
        for sub, keys in groups.items():  # shard first: the stack renames in reverse, the target first
            tmp = self._stack.enter_context(atomic_write(self.out_dir / sub / self.name, overwrite=True))
            f = self._files[sub] = h5py.File(tmp, "w", track_order=False)
            self._stack.callback(f.close)
            for key, dtype in keys.items():
                v = row[key]
                shape, dt = (v.shape, np.dtype(v.dtype)) if isinstance(v, Chunk) else (np.shape(v), np.dtype(dtype))
                opts = dict(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True) \
                    if isinstance(v, Chunk) else {}
                f.create_dataset(key, shape=(self.capacity, *shape), maxshape=(None, *shape), dtype=dt,
                                 chunks=(1, *shape), track_times=False, **opts)

    def add(self, row: dict) -> None:
        if not self._files:
            self._open(row)
        j = len(self.ids)
        for sub, keys in ((SHARD_DIR, MAIN_KEYS), (TARGET_DIR, TARGET_KEYS)):
            if sub not in self._files:
                continue
            for key, dtype in keys.items():
                v, ds = row[key], self._files[sub][key]
                if isinstance(v, Chunk):
                    if v.shape != ds.shape[1:]:
                        raise ValueError(f"'{key}': slice {row['id']} has shape {v.shape}, the shard {ds.shape[1:]}")
                    ds.id.write_direct_chunk((j,) + (0,) * len(v.shape), v.data)
                else:
                    ds[j] = np.asarray(v, dtype=dtype)
        self.ids.append(row["id"])
        for key in self.small:
            self.small[key].append(row[key])

    def _finish(self) -> None:
        n = len(self.ids)
        for f in self._files.values():
            for key in f:
                f[key].resize(n, axis=0)
            f.create_dataset("ids", data=np.asarray(self.ids, dtype=object), dtype=h5py.string_dtype("utf-8"),
                             track_times=False)
        for key, values in self.small.items():
            self._files[SHARD_DIR].create_dataset(key, data=np.asarray(values, np.float32), track_times=False)

    def __exit__(self, *exc):
        if exc[0] is None and self._files:
            self._finish()
        self._stack.__exit__(*exc)  # closes the files; on success renames them (targets first), else removes them
        if exc[0] is None and self._files:
            n = len(self.ids)
            for sub in self._files:
                path = self.out_dir / sub / self.name
                e = {"name": self.name, "num_slices": n, "sha256": _sha256(path), "bytes": path.stat().st_size}
                if sub == SHARD_DIR:
                    self.entry = {**e, "ids": list(self.ids)}
                else:
                    self.target_entry = e
        return False


def config_hash(config: dict, sources: list[dict]) -> str:
    blob = json.dumps({"config": config, "sources": sources}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


_SHARD = re.compile(r"shard_\d{5}\.h5")
_TMP = re.compile(r"\.shard_\d{5}\.h5\.\d+\.tmp")  # left by a worker killed while writing (atomic_write's name)


def _remove(out_dir: Path, pattern: re.Pattern) -> None:
    for sub in (SHARD_DIR, TARGET_DIR):
        d = out_dir / sub
        if d.is_dir():
            for p in d.iterdir():
                if pattern.fullmatch(p.name):
                    p.unlink(missing_ok=True)


def clear(out_dir: Path) -> None:
    """Remove a previous prepared set in out_dir (only files this module writes)."""
    for name in (MANIFEST, PARTIAL_MANIFEST):
        (out_dir / name).unlink(missing_ok=True)
    _remove(out_dir, _SHARD)
    _remove(out_dir, _TMP)


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
    _remove(out_dir, _TMP)
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
        warnings.warn(f"{out_dir}: shard {state['shards'][good]['name']} of the interrupted run is missing or changed; "
                      f"redoing from there")
        done = state["shards"][good]["task"]
        state.update(shards=state["shards"][:good], target_shards=state["target_shards"][:good], tasks_done=done,
                     skipped=[s for s in state["skipped"] if s["task"] < done])
    return state
