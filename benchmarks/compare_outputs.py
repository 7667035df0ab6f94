"""Compare two output trees file by file (a refactor must not change any result).

    python benchmarks/compare_outputs.py BEFORE AFTER [--ignore NAME ...] [--quiet]

Both trees are walked (e.g. two ``benchmarks/table.py --out`` folders, or two ``mridiff prep`` / ``recon``
outputs); a file present in one tree only is a difference. Per file, by kind:

- HDF5 (``.h5``): the same groups and datasets; every dataset equal bit for bit (dtype, shape and bytes; string
  datasets element by element); every attribute (file, group and dataset) equal, except the timing, commit and
  fingerprint attributes (``IGNORED``, plus ``--ignore``).
- JSON (``.json``, ``.done`` and any other file that parses as JSON): the same structure, every number equal
  (exactly; NaN equals NaN), every string equal after the tree's own root is replaced by ``<ROOT>``; keys in
  ``IGNORED`` are skipped at any depth.
- CSV: the same cells; numbers exactly equal, strings after the root replacement.
- anything else (PNG, HTML, text): the same bytes after the root replacement.

For differing numeric datasets the largest absolute and relative difference is printed, so a change can be
sized. Exit status 0 when everything is equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np

# timing, commit and fingerprint entries: they differ between any two runs of the same code
IGNORED = frozenset({"seconds_per_slice", "seconds", "code_commit", "commit", "made_at", "settings_fingerprint",
                     "created", "date", "machine", "command", "argv", "elapsed", "wall_s", "s_per_slice"})


class Tree:
    def __init__(self, root: Path):
        self.root = root
        self.names = {str(root.resolve()), str(root)}

    def text(self, s: str) -> str:
        for n in sorted(self.names, key=len, reverse=True):
            s = s.replace(n, "<ROOT>")
        return s


def _same_number(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _json_diff(a, b, ta: Tree, tb: Tree, ignored, where="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in ignored:
                continue
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                out += _json_diff(a[k], b[k], ta, tb, ignored, f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, ta, tb, ignored, f"{where}[{i}]")]
    if isinstance(a, str) and isinstance(b, str):
        return [] if ta.text(a) == tb.text(b) else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if _same_number(a, b) else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _dataset_diff(name: str, a: h5py.Dataset, b: h5py.Dataset) -> list[str]:
    if a.shape != b.shape or a.dtype != b.dtype:
        return [f"{name}: shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}"]
    x, y = a[()], b[()]
    if a.dtype.kind in "OSU":
        return [] if np.asarray(x).tolist() == np.asarray(y).tolist() else [f"{name}: strings differ"]
    x, y = np.asarray(x), np.asarray(y)
    if x.tobytes() == y.tobytes():
        return []
    d = np.abs(x.astype(np.complex128 if x.dtype.kind == "c" else np.float64) - y)
    ref = np.abs(x).max() if x.size else 0.0
    n = int(np.count_nonzero(x != y))
    return [f"{name}: {n} of {x.size} values differ, max |diff| {d.max():.3g} "
            f"(relative to max |before| {d.max() / ref if ref else float('inf'):.3g})"]


def _h5_diff(pa: Path, pb: Path, ta: Tree, tb: Tree, ignored) -> list[str]:
    out = []
    with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
        na, nb = [], []
        fa.visit(na.append)
        fb.visit(nb.append)
        for name in sorted(set(na) ^ set(nb)):
            out.append(f"{name}: only in {'before' if name in na else 'after'}")
        for name in ["/"] + sorted(set(na) & set(nb)):
            oa, ob = fa[name], fb[name]
            if isinstance(oa, h5py.Dataset) and isinstance(ob, h5py.Dataset):
                out += _dataset_diff(name, oa, ob)
            attrs_a = {k: _attr_value(v) for k, v in oa.attrs.items()}
            attrs_b = {k: _attr_value(v) for k, v in ob.attrs.items()}
            out += [f"{name} attr{d}" for d in _json_diff(attrs_a, attrs_b, ta, tb, ignored)]
    return out


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _cell_same(a: str, b: str, ta: Tree, tb: Tree) -> bool:
    try:
        return _same_number(float(a), float(b))
    except ValueError:
        return ta.text(a) == tb.text(b)


def _csv_diff(pa: Path, pb: Path, ta: Tree, tb: Tree) -> list[str]:
    ra, rb = _csv_rows(pa.read_text()), _csv_rows(pb.read_text())
    if len(ra) != len(rb):
        return [f"{len(ra)} rows != {len(rb)} rows"]
    out = []
    for i, (x, y) in enumerate(zip(ra, rb)):
        if len(x) != len(y) or not all(_cell_same(c, d, ta, tb) for c, d in zip(x, y)):
            out.append(f"row {i}: {x} != {y}")
    return out


def _load_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def compare_file(pa: Path, pb: Path, ta: Tree, tb: Tree, ignored=IGNORED) -> list[str]:
    """Differences between two files of the same relative path (empty: equal)."""
    if pa.suffix == ".h5":
        return _h5_diff(pa, pb, ta, tb, ignored)
    if pa.suffix == ".csv":
        return _csv_diff(pa, pb, ta, tb)
    if pa.suffix in (".json", ".done", ""):
        ja, jb = _load_json(pa), _load_json(pb)
        if ja is not None and jb is not None:
            return _json_diff(ja, jb, ta, tb, ignored)
    a, b = pa.read_bytes(), pb.read_bytes()
    if a == b:
        return []
    try:
        return [] if ta.text(a.decode()) == tb.text(b.decode()) else ["bytes differ"]
    except UnicodeDecodeError:
        return ["bytes differ"]


def compare_trees(before: Path, after: Path, ignored=IGNORED) -> dict[str, list[str]]:
    """{relative path: differences} for every file of either tree (equal files map to [])."""
    ta, tb = Tree(before), Tree(after)
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    out = {}
    for rel in sorted(files_a | files_b):
        if rel not in files_a or rel not in files_b:
            out[str(rel)] = [f"only in {'before' if rel in files_a else 'after'}"]
        else:
            out[str(rel)] = compare_file(before / rel, after / rel, ta, tb, ignored)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--ignore", action="append", default=[], help="another attribute / JSON key to skip")
    ap.add_argument("--quiet", action="store_true", help="only the summary line and the differing files")
    args = ap.parse_args(argv)
    for p in (args.before, args.after):
        if not p.is_dir():
            raise SystemExit(f"error: {p} is not a folder")
    diffs = compare_trees(args.before, args.after, IGNORED | set(args.ignore))
    bad = {k: v for k, v in diffs.items() if v}
    for rel, d in diffs.items():
        if d:
            print(f"DIFFERS {rel}")
            for line in d[:10]:
                print(f"    {line}")
            if len(d) > 10:
                print(f"    ... and {len(d) - 10} more")
        elif not args.quiet:
            print(f"same    {rel}")
    print(f"{len(diffs) - len(bad)} of {len(diffs)} files equal; {len(bad)} differ "
          f"(ignored keys: {', '.join(sorted(IGNORED | set(args.ignore)))})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
