"""Which volumes each method covers, for ``evaluate``: a target without a prediction, or a prediction without a
target, is a missing pair. Missing pairs are named, and refused unless the caller allows them; allowed, they are
recorded (notes and ``summary['missing']``) so that no volume drops out of a mean without saying so."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import h5py


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


def check_coverage(items: Sequence, targets: set[str], target_dir: Path, keys: Sequence[str], allow_missing: bool,
                   error: type) -> tuple[list, list[str], dict[str, dict[str, list[str]]]]:
    """(items that have a target, notes, {label: {'predictions': [...], 'targets': [...]}} of what is missing).

    ``items`` have ``.label`` and ``.path``. Raises ``error`` naming every missing pair unless ``allow_missing``.
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
        raise error("missing pairs (the means would cover different volumes):\n  " + "\n  ".join(lines)
                    + "\npass --allow-missing (allow_missing=True) to score the pairs that are present; the report "
                      "then lists what is missing")
    notes = [f"--allow-missing: {line}" for line in lines]
    if len({frozenset(names & targets) for names in labels.values()}) > 1:
        notes.append("methods were evaluated on different sets of volumes (listed above); their means are not "
                     "directly comparable")
    kept = [it for it in items if it.path.name in targets]
    if not kept:
        raise error(f"no prediction has a target in {target_dir}")
    return kept, notes, missing
