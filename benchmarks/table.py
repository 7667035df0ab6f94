"""The benchmark table by which the project is judged (fastMRI protocol, same masks for every method).

Rows: zero-filled, CG-SENSE, L1-wavelet (weight tuned on the validation block, never on test), and
posterior sampling with each prior (default set: ``dsm`` supervised ceiling, ``gsure_r4`` = the built-in
prior, ``ambient_r4``, ``views+residual``). Columns: PSNR, SSIM, NMSE as mean +- 2 std over the test volumes,
network calls and seconds per slice, at each acceleration; with ``--real`` the real fully sampled scans
(e.g. the 8-coil brain in ../shared/data/real) as a separate column group, undersampled retrospectively
with the same mask rule. Per-pixel calibration of the posterior std is listed under the table.

Writes the evaluation (CSV/JSON/HTML report) to OUT/eval[_real] and, with ``--markdown FILE``, replaces the
table's section in FILE (between the ``benchmark-table`` markers; the rest of FILE is kept) with the date,
machine, commit and the exact command.

Full table (what the closing notes quote):
  python benchmarks/table.py --data runs/colin27 --real ../shared/data/real/fastmri_format/multicoil \
      --out runs/table --markdown BENCHMARKS.md
Quick (CI-sized: 1 slice per volume, 2 posterior samples, short L1 tuning):
  python benchmarks/table.py --quick --data DIR --prior gsure_r4=builtin --out OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

import h5py
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mri_diffusion.atomic import atomic_write_text  # noqa: E402
from recon.diffusion import FEW_STEP  # noqa: E402
from recon.evaluate import evaluate_dirs  # noqa: E402
from recon.experiment import (L1_GRID, baseline_methods, git_commit, machine_line, prior_method,  # noqa: E402
                               run_methods)
from mri_diffusion.priors import SHIPPED  # noqa: E402
from recon.uncertainty import ideal  # noqa: E402

from paired import parse_pairs  # noqa: E402
from paired import table as paired_table  # noqa: E402

# The default priors and the command that makes each (all on the Colin27 data, runs/colin27); the shipped
# ``builtin`` (real-anatomy) prior is added with --prior builtin=builtin.
DEFAULT_PRIORS = {
    "dsm": ("runs/train_dsm/checkpoint.pt", "mridiff train --config configs/train/dsm_cpu.yaml"),
    "gsure_r4": ("runs/train_gsure_r4/checkpoint.pt", "mridiff train --config configs/train/gsure_r4_cpu.yaml"),
    "ambient_r4": ("runs/train_ambient_r4/checkpoint.pt", "mridiff train --config configs/train/ambient_r4_cpu.yaml"),
    "views+residual": ("runs/views/views_lowres/checkpoint.pt",
                       "mridiff train --config configs/train/views_lowres.yaml"),
}
MASK_TEXT = {"random": "1-D random", "equispaced": "1-D equispaced", "poisson": "2-D Poisson-disc"}
BEGIN, END = "<!-- benchmark-table:begin -->", "<!-- benchmark-table:end -->"


def parse_priors(items: list[str]) -> list[tuple[str, str]]:
    if not items:
        out = []
        for name, (path, how) in DEFAULT_PRIORS.items():
            if not (ROOT / path).exists():
                raise SystemExit(f"error: prior {name}: {path} not found; make it with `{how}` or pass --prior NAME=CKPT")
            out.append((name, str(ROOT / path)))
        return out
    out = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --prior {item!r}: expected NAME=CHECKPOINT")
        out.append(tuple(item.split("=", 1)))
    return out


def group_table(summary: dict, recon_root: Path, made_at: set | None = None) -> dict[tuple[str, float], dict]:
    """(method, R) -> metrics (mean, two_std) with the calls and seconds per slice read from the outputs;
    ``made_at`` collects the code commits the reconstruction files record."""
    made_at = set() if made_at is None else made_at
    rows = {}
    for g in summary["groups"]:
        R = float(g["acceleration"])
        folder = recon_root / f"{g['method']}_R{R:g}"
        files = sorted(folder.glob("*.h5"))
        calls = secs = 0.0
        for f in files:
            with h5py.File(f) as h:
                calls = int(h.attrs.get("network_calls_per_sample", 0))
                secs += float(h.attrs.get("seconds_per_slice", math.nan)) / len(files)
                made_at.add(str(h.attrs.get("code_commit", "unrecorded")))
        rows[(g["method"], R)] = {"psnr": g["psnr"], "ssim": g["ssim"], "nmse": g["nmse"], "calls": calls,
                                  "s_per_slice": secs}
    return rows


def _num(x, spec: str) -> str:
    return "n/a" if x is None else f"{x:{spec}}"


def _pm(stat: dict, spec: str) -> str:
    two = stat.get("two_std")
    return _num(stat.get("mean"), spec) + (f" +- {two:{spec}}" if two is not None else "")


def markdown_table(rows: dict, real: dict | None, order: list[str], Rs: list[float], samples: int) -> list[str]:
    head = "| method | R | PSNR (dB) | SSIM | NMSE | network calls/slice | s/slice |"
    rule = "|---|---|---|---|---|---|---|"
    if real is not None:
        head += " real: PSNR (dB) | real: SSIM | real: NMSE |"
        rule += "---|---|---|"
    lines = [head, rule]
    for R in Rs:
        for m in order:
            if (m, R) not in rows:
                continue
            r = rows[(m, R)]
            calls = f"{r['calls']} (x{samples} samples batched)" if r["calls"] else "0"
            line = (f"| {m} | {R:g} | {_pm(r['psnr'], '.2f')} | {_pm(r['ssim'], '.4f')} | {_pm(r['nmse'], '.4f')} | "
                    f"{calls} | {r['s_per_slice']:.2f} |")
            if real is not None:
                q = real.get((m, R))
                line += (" n/a | n/a | n/a |" if q is None else f" {_num(q['psnr']['mean'], '.2f')} | "
                         f"{_num(q['ssim']['mean'], '.4f')} | {_num(q['nmse']['mean'], '.4f')} |")
            lines.append(line)
    return lines


def write_section(path: Path, text: str, section: str = "Benchmark table") -> None:
    """Replace the marked section of ``path`` (or put it first), atomically. Each section title has its own
    markers (the default title keeps the historical ones)."""
    begin, end = BEGIN, END
    if section != "Benchmark table":
        tag = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
        begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if begin in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[:old.index(begin)] + block + ("\n" + rest if rest else "")
    else:
        new = block + ("\n" + old if old else "")
    atomic_write_text(path, new, overwrite=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="simulation root with multicoil_val/ and multicoil_test/")
    ap.add_argument("--prior", action="append", default=[], help="NAME=CHECKPOINT (repeat); default: "
                    + ", ".join(f"{k}={v[0]}" for k, v in DEFAULT_PRIORS.items()))
    ap.add_argument("--real", type=Path, default=None, help="folder of real fully sampled fastMRI files")
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--sampler", default="dds", help="posterior sampler (cg: the old name of dds)")
    ap.add_argument("--steps", type=int, default=None, help="noise levels (default: the sampler's recipe)")
    ap.add_argument("--samples", type=int, default=4, help="posterior samples per slice")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="CI-sized: 1 slice per volume, 2 samples, short tuning")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", type=Path, default=None, help="replace the table's section of this file")
    ap.add_argument("--pair", action="append", default=[], help="METHOD_A:METHOD_B: add per-slice paired "
                    "differences with 95 %% CIs (benchmarks/paired.py); repeat")
    ap.add_argument("--mask", default="random", choices=["random", "equispaced", "poisson"],
                    help="retrospective mask kind (fastMRI conventions), the same for tuning and testing")
    ap.add_argument("--few-step", action="store_true", help="also run each prior with the 10-call dds recipe "
                    "(steps 10, sigma 1 -> 0.03, eta 1.0) as diffusion-NAME-fast10")
    ap.add_argument("--label", default="Built-in test block", help="what the test data is, for the text")
    ap.add_argument("--section", default="Benchmark table", help="section title (and markers) in --markdown")
    a = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is available")
    Rs = [float(r) for r in a.accelerations.split(",")]
    if a.quick:
        a.max_slices, a.samples = a.max_slices or 1, min(a.samples, 2)
    priors = parse_priors(a.prior)
    methods = baseline_methods(a.data / "multicoil_val", Rs, dev, grid=(1e-3, 3e-3) if a.quick else L1_GRID,
                               max_slices=1 if a.quick else 2, mask_kind=a.mask, log=lambda R, lam, scores: print(
                                   f"L1-wavelet weight at R={R:g} tuned on validation: {lam:g}  (val PSNR {scores})",
                                   file=sys.stderr))
    methods += [prior_method(f"diffusion-{name}", path, dev, a.sampler, a.steps, a.samples) for name, path in priors]
    if a.few_step:  # the 10-call dds recipe (BENCHMARKS.md, Few-step sampling) next to each prior's default
        methods += [prior_method(f"diffusion-{name}-fast10", path, dev, samples=a.samples, **FEW_STEP)
                    for name, path in priors]
    order = [m.name for m in methods]
    test = a.data / "multicoil_test"
    run_methods(test, a.out / "recon", methods, Rs, dev, mask_kind=a.mask, max_slices=a.max_slices)
    res = evaluate_dirs(a.out / "recon", test, a.out / "eval", overwrite=True,
                        title="mri-diffusion benchmark table: built-in test block")
    made_at: set[str] = set()
    rows = group_table(res.summary, a.out / "recon", made_at)
    real = None
    if a.real is not None:
        run_methods(a.real, a.out / "recon_real", methods, Rs, dev, mask_kind=a.mask, max_slices=a.max_slices)
        rr = evaluate_dirs(a.out / "recon_real", a.real, a.out / "eval_real", overwrite=True,
                           title="mri-diffusion benchmark table: real scans")
        real = group_table(rr.summary, a.out / "recon_real", made_at)
    lines = markdown_table(rows, real, order, Rs, a.samples)
    if a.pair:
        lines += ["", "Per-slice paired differences (fastMRI crop and data range; 95 % CIs by Student t over slices "
                  "and over volumes):", "", *paired_table(a.out / "recon", test, parse_pairs(a.pair), Rs)]
    unc = []
    for u in res.summary.get("uncertainty", []):
        ref = ideal(u["samples"]) if (u.get("samples") or 0) >= 2 else None
        unc.append(f"- {u['method']} R={u['acceleration']}: corr(std, |error|) {_num(u['corr'], '.3f')}; |error| <= 2 "
                   f"std for {100 * u['within_2std']:.1f} % of pixels, mean |error| / mean std {_num(u['ratio'], '.2f')}"
                   + (f" (a calibrated posterior with {u['samples']} samples: {100 * ref['within_2std']:.1f} %, "
                      f"{ref['ratio']:.2f})" if ref else ""))
    n_slices = sum(1 for _ in test.glob("*.h5"))
    args = sys.argv[1:] if argv is None else list(argv)
    cmd = "python " + " ".join(shlex.quote(x) for x in ["benchmarks/table.py", *args])
    text = "\n".join([
        f"## {a.section} ({datetime.date.today()}, commit {git_commit()}{', QUICK variant' if a.quick else ''})",
        "",
        f"Machine: {machine_line(dev)}. Command: `{cmd}`. Reconstructions made at commit(s) "
        f"{', '.join(sorted(made_at))} (finished methods in OUT are reused).",
        "",
        f"{res.summary.get('protocol_text', 'fastMRI protocol').rstrip('.')}. {a.label}: {n_slices} volumes of {test}"
        f"{f' (first {a.max_slices} slice(s) each)' if a.max_slices else ''}; {MASK_TEXT[a.mask]} masks (seeded per file, the "
        f"same for every method); sampler {a.sampler}, {a.samples} posterior samples per slice run as one batch "
        f"(network calls count calls of that batched network). Priors: "
        + ", ".join(f"{n} = {p if p in SHIPPED else os.path.relpath(p, ROOT)}" for n, p in priors) + "."
        + (f" Real column group: {a.real} (real coil data; none of the priors was trained on it)." if a.real else ""),
        "",
        *lines,
        "",
        f"Posterior-std calibration ({a.label}, pooled pixels in the evaluation crop):",
        "",
        *unc,
        ""])
    print(text)
    with open(a.out / "table.json", "w") as f:
        json.dump({"rows": {f"{m}|{R:g}": v for (m, R), v in rows.items()},
                   "real": {f"{m}|{R:g}": v for (m, R), v in (real or {}).items()}, "command": cmd}, f, indent=1)
    if a.markdown:
        write_section(a.markdown, text, a.section)
    return rows, real


if __name__ == "__main__":
    main()
