"""SFBD's figures from reconstruction folders (issue 17): test PSNR against round, and the share of the gap between
DSM on the clean volumes only (a) and DSM on all fully sampled volumes (d) that each round closes.

Each folder is one method at one acceleration, made on the same masks (``benchmarks/table.py`` or
``recon.experiment.run_methods`` on the same data; masks are seeded per file), e.g.
``runs/table_sfbd7/recon/diffusion-sfbd7_r1_R8``. Per slice (fastMRI crop, volume maximum as range,
``benchmarks/paired.per_slice``):

- each method's mean PSNR;
- round k - (a), round k - (b) GSURE, (d) - (a): mean [95 % CI over slices];
- closed share = mean(round k - a) / mean(d - a): 1 = SFBD reaches the ceiling, 0 = no better than (a).

Usage: python benchmarks/sfbd_curve.py --target runs/siat128/multicoil_test --a DIR --b DIR --d DIR
           --round 1=DIR --round 2=DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import ci95, per_slice  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=Path, required=True, help="the fully sampled test files")
    ap.add_argument("--a", type=Path, required=True, help="DSM on the clean volumes only")
    ap.add_argument("--b", type=Path, required=True, help="GSURE on all the undersampled data")
    ap.add_argument("--d", type=Path, required=True, help="DSM on all fully sampled volumes (the ceiling)")
    ap.add_argument("--round", action="append", default=[], help="K=DIR: SFBD after round K (repeat)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    dirs = {"a": a.a, "b": a.b, "d": a.d, **{f"round {k}": Path(d) for k, d in (x.split("=", 1) for x in a.round)}}
    m = {k: per_slice(d, a.target) for k, d in dirs.items()}
    keys = sorted(set.intersection(*(set(v) for v in m.values())))
    if not keys:
        raise SystemExit("error: the folders share no slice")
    p = {k: np.array([v[s]["psnr"] for s in keys]) for k, v in m.items()}
    gap = p["d"] - p["a"]
    out = {"slices": len(keys), "volumes": len({s[0] for s in keys}), "psnr": {k: float(v.mean()) for k, v in p.items()},
           "d_minus_a": ci95(gap), "b_minus_a": ci95(p["b"] - p["a"]), "rounds": {}}
    ci = lambda c: f"{c[0]:+.2f} [{c[1]:+.2f}, {c[2]:+.2f}]"  # noqa: E731
    lines = [f"{len(keys)} slices ({out['volumes']} volumes). (a) {p['a'].mean():.2f}, (b) GSURE {p['b'].mean():.2f}, "
             f"(d) {p['d'].mean():.2f} dB; (d) - (a) {ci(out['d_minus_a'])}; (b) - (a) {ci(out['b_minus_a'])}.", "",
             "| SFBD after | PSNR (dB) | - (a) DSM clean only | - (b) GSURE | share of the (a)-(d) gap closed |",
             "|---|---|---|---|---|"]
    for k in dirs:
        if not k.startswith("round"):
            continue
        r = {"psnr": float(p[k].mean()), "minus_a": ci95(p[k] - p["a"]), "minus_b": ci95(p[k] - p["b"]),
             "closed": float((p[k] - p["a"]).mean() / gap.mean())}
        out["rounds"][k] = r
        lines.append(f"| {k} | {r['psnr']:.2f} | {ci(r['minus_a'])} | {ci(r['minus_b'])} | {100 * r['closed']:.0f} % |")
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
