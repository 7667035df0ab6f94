"""Find the pairs: which prediction files there are (method folders, method and acceleration from the files'
attrs or the folder label), and which target each one is scored against (same file name). A target without a
prediction, or a prediction without a target, is a missing pair: named, and refused unless the caller allows them;
allowed, they are recorded (notes and ``summary['missing']``) so that no volume drops out of a mean without saying
so. Only attributes and dataset names are read here; the data is read once, by :mod:`recon.evaluation.load`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import h5py
import numpy as np

_LABEL_RE = re.compile(r"^(?P<method>.+?)[_\-]R(?P<acc>\d+(?:\.\d+)?)$", re.IGNORECASE)


class EvaluationError(Exception):
    """A prediction cannot be scored (missing target, shape mismatch, NaN, ...)."""


class EvaluationWarning(UserWarning):
    """Something was skipped or excluded (e.g. an invalid volume with allow_nan)."""


@dataclass
class Item:
    """One prediction file to score."""

    method: str
    acceleration: Any
    path: Path

    @property
    def label(self) -> str:
        return self.method if self.acceleration is None else f"{self.method} R{self.acceleration}"


def norm_acc(value: Any) -> Any:
    """Acceleration as int (if integral), float, or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else None
        if value is None:
            return None
    try:
        f = float(str(value).strip().lstrip("Rr")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() else f


def parse_method_label(label: str) -> tuple[str, Any]:
    """Split a folder label such as ``"zero-filled_R4"`` into ``("zero-filled", 4)``.

    Labels without an ``_R<n>`` / ``-R<n>`` suffix give ``(label, None)``.
    """
    m = _LABEL_RE.match(label)
    if not m:
        return label, None
    return m.group("method"), norm_acc(m.group("acc"))


def _h5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file()
                  and not p.name.startswith("."))


def discover_method_dirs(pred_dirs: Union[Mapping[str, Union[str, Path]], str, Path]) -> list[tuple[str, Path]]:
    """Resolve the prediction folders to ``[(label, folder), ...]``.

    * a mapping ``name -> folder``: each folder holds ``.h5`` files of one method;
    * a single folder holding ``.h5`` files: one method labelled by the folder name;
    * a single folder without ``.h5`` files: every sub-folder holding ``.h5``
      files is one method, labelled by the sub-folder name.

    Raises:
        EvaluationError: a folder is missing or holds no prediction files.
    """
    if isinstance(pred_dirs, Mapping):
        out = []
        for name, folder in pred_dirs.items():
            folder = Path(folder)
            if not folder.is_dir():
                raise EvaluationError(f"prediction folder {folder} (method {name!r}) does not exist")
            if not _h5_files(folder):
                raise EvaluationError(f"prediction folder {folder} (method {name!r}) holds no .h5 files")
            out.append((str(name), folder))
        if not out:
            raise EvaluationError("no prediction folders given")
        return out
    folder = Path(pred_dirs)
    if not folder.is_dir():
        raise EvaluationError(f"prediction folder {folder} does not exist")
    if _h5_files(folder):
        return [(folder.name, folder)]
    subs = [(d.name, d) for d in sorted(folder.iterdir()) if d.is_dir() and _h5_files(d)]
    if not subs:
        raise EvaluationError(f"{folder} holds no .h5 prediction files and no method sub-folders with .h5 files")
    return subs


def _attr(attrs: Any, key: str) -> Any:
    if key not in attrs:
        return None
    v = attrs[key]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    return v


def collect_items(method_dirs: Sequence[tuple[str, Path]]) -> list[Item]:
    """Every prediction file with its method and acceleration (file attrs win over the folder label)."""
    items, seen = [], {}
    for label, folder in method_dirs:
        folder_method, folder_acc = parse_method_label(label)
        for path in _h5_files(folder):
            with h5py.File(path, "r") as f:
                method = _attr(f.attrs, "method")
                acc = norm_acc(_attr(f.attrs, "acceleration"))
            item = Item(str(method) if method not in (None, "") else folder_method,
                         acc if acc is not None else folder_acc, path)
            key = (item.method, item.acceleration, path.name)
            if key in seen:
                raise EvaluationError(
                    f"duplicate prediction for method {item.method!r}, acceleration "
                    f"{item.acceleration!r}, file {path.name}: {seen[key]} and {path}")
            seen[key] = path
            items.append(item)
    return items


def target_names(target_dir: Path, keys: Sequence[str]) -> set[str]:
    """Names of the ``.h5`` files in ``target_dir`` holding one of the reference datasets ``keys``."""
    names = set()
    for p in sorted(target_dir.glob("*.h5")):
        if p.name.startswith("."):
            continue
        try:
            with h5py.File(p, "r") as f:
                if any(k in f for k in keys):
                    names.add(p.name)
        except OSError:
            continue  # unreadable: reported when (if) a prediction needs it
    return names


def _listing(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_coverage(items: Sequence[Item], targets: set[str], target_dir: Path, keys: Sequence[str],
                   allow_missing: bool) -> tuple[list[Item], list[str], dict[str, dict[str, list[str]]]]:
    """(items that have a target, notes, {label: {'predictions': [...], 'targets': [...]}} of what is missing).

    Raises ``EvaluationError`` naming every missing pair unless ``allow_missing``.
    """
    labels: dict[str, set[str]] = {}
    for it in items:
        labels.setdefault(it.label, set()).add(it.path.name)
    missing = {}
    for label, names in sorted(labels.items()):
        m = {"predictions": sorted(targets - names), "targets": sorted(names - targets)}
        if m["predictions"] or m["targets"]:
            missing[label] = m
    lines = []
    for label, m in missing.items():
        if m["predictions"]:
            lines.append(f"{label}: no prediction for {len(m['predictions'])} of {len(targets)} target volume(s): "
                         f"{_listing(m['predictions'])}")
        if m["targets"]:
            there = [n for n in m["targets"] if (target_dir / n).exists()]
            lines.append(f"{label}: no target for prediction{'s' if len(m['targets']) > 1 else ''} "
                         f"{_listing(m['targets'])} in {target_dir}"
                         + (f" ({_listing(there)} exist but hold none of {list(keys)})" if there else ""))
    if lines and not allow_missing:
        raise EvaluationError("missing pairs (the means would cover different volumes):\n  " + "\n  ".join(lines)
                    + "\npass --allow-missing (allow_missing=True) to score the pairs that are present; the report "
                      "then lists what is missing")
    notes = [f"--allow-missing: {line}" for line in lines]
    if len({frozenset(names & targets) for names in labels.values()}) > 1:
        notes.append("methods were evaluated on different sets of volumes (listed above); their means are not "
                     "directly comparable")
    kept = [it for it in items if it.path.name in targets]
    if not kept:
        raise EvaluationError(f"no prediction has a target in {target_dir}")
    return kept, notes, missing
