"""How ``mridiff prep`` scales: slices/s with 1 and N workers side by side, disk per slice, projection to fastMRI.

Writes a mock fastMRI folder (``data_prep.mock_fastmri``: readout-oversampled k-space, mixed widths and coil
counts; brain-like by default: reconSpace 320 x 320, k-space 640 x {320, 368, 396}, {16, 20, 12} coils), prepares
it with ``--workers 1`` and ``--workers N`` (and one worker with N torch threads), alternating ``--repeats`` times,
checks that every run wrote the same shards (sha256), and prints the rate (slices/s, per worker), the ratio, the
disk per slice, the prepared / raw ratio at the training matrix, and the projection for the fastMRI brain training
split (about 70 k slices; the assumptions are printed with it).

    OMP_NUM_THREADS=1 python benchmarks/prep_scale.py --out runs/issue19/bench
    OMP_NUM_THREADS=1 python benchmarks/prep_scale.py --out runs/issue19/bench_small --recon 128x128 \\
        --widths 128,136,144 --coils 6,8,12 --virtual-coils 6 --files 6 --slices 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_prep.mock_fastmri import MockConfig, mock_folder  # noqa: E402
from data_prep.prepare import PrepConfig, prepare  # noqa: E402

BRAIN_TRAIN_SLICES = 70_000  # fastMRI brain multi-coil training split, about 4 469 volumes x ~16 slices


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished children (the pool's workers)."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime


def run_once(raw: Path, out: Path, cfg: PrepConfig, workers: int, threads: int) -> dict:
    """One prep run: wall time, rate, and CPU seconds of the parent and of the workers (a machine shared with
    other jobs stretches the wall time; the CPU seconds say what the work costs)."""
    shutil.rmtree(out, ignore_errors=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        c0, t0 = _cpu(), time.monotonic()
        m = prepare([raw], out, cfg, progress=False, workers=workers)
        wall, c1 = time.monotonic() - t0, _cpu()
    finally:
        torch.set_num_threads(before)
    parent, children = c1[0] - c0[0], c1[1] - c0[1]
    return {"workers": workers, "threads": threads, "wall_s": wall, "rate": m["num_slices"] / wall,
            "cpu_parent_s": parent, "cpu_workers_s": children, "cpu_s": parent + children,
            "cpu_s_parent": m["run"]["cpu_s_parent"],
            "loop_rate": m["run"]["slices_per_s"], "sha": [s["sha256"] for s in m["shards"]], "manifest": m}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recon", default="320x320")
    ap.add_argument("--oversampling", type=int, default=2)
    ap.add_argument("--widths", default="320,368,396")
    ap.add_argument("--coils", default="16,20,12")
    ap.add_argument("--virtual-coils", type=int, default=8)
    ap.add_argument("--matrix", default=None, help="HxW (default: from the headers)")
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = ap.parse_args(argv)

    recon = tuple(int(v) for v in a.recon.split("x"))
    raw = a.out / "raw"
    mcfg = MockConfig(recon=recon, readout_oversampling=a.oversampling, widths=ints(a.widths), coils=ints(a.coils))
    if not raw.exists():
        mock_folder(raw, mcfg, files=a.files, slices=a.slices)
    raw_bytes = sum(p.stat().st_size for p in raw.glob("*.h5"))
    matrix = tuple(int(v) for v in a.matrix.split("x")) if a.matrix else None
    cfg = PrepConfig(virtual_coils=a.virtual_coils, matrix=matrix)

    runs = []
    for r in range(a.repeats):
        for workers, threads in ((1, 1), (a.workers, 1), (1, a.workers)):
            if threads > 1 and r > 0:
                continue
            load = os.getloadavg()[0]
            res = run_once(raw, a.out / f"set_w{workers}_t{threads}", cfg, workers, threads)
            res["load_before"] = load
            runs.append(res)
            print(f"  repeat {r}: {workers} worker(s) x {threads} thread(s): {res['wall_s']:.1f} s, "
                  f"{res['rate']:.3f} slices/s; CPU {res['cpu_s']:.1f} s (parent {res['cpu_parent_s']:.1f} s) "
                  f"(1-min load average before: {load:.2f})", flush=True)
    same = all(x["sha"] == runs[0]["sha"] for x in runs)
    rate = {k: statistics.median(x["rate"] for x in runs if (x["workers"], x["threads"]) == k)
            for k in ((1, 1), (a.workers, 1), (1, a.workers))}
    cpu = {k: statistics.median(x["cpu_s"] for x in runs if (x["workers"], x["threads"]) == k)
           for k in ((1, 1), (a.workers, 1))}
    parent = statistics.median(x["cpu_s_parent"] for x in runs if x["workers"] == a.workers and x["threads"] == 1)
    # what the measured CPU seconds predict on idle cores: the tasks' CPU times scheduled on N workers in the
    # pool's order, plus the parent's CPU time as if it never overlapped (prepare's run.idle_estimate_s)
    est = {k: statistics.median(x["manifest"]["run"]["idle_estimate_s"][str(k[0])] for x in runs
                                if (x["workers"], x["threads"]) == k) for k in ((1, 1), (a.workers, 1))}
    idle_ratio = est[(1, 1)] / est[(a.workers, 1)]
    m = runs[0]["manifest"]
    n, disk = m["num_slices"], m["disk"]
    H, W = m["image_shape"]
    best = rate[(a.workers, 1)]
    hours = BRAIN_TRAIN_SLICES / best / 3600
    hours1 = BRAIN_TRAIN_SLICES / rate[(1, 1)] / 3600
    cpu_slice = statistics.median(x["manifest"]["run"]["cpu_s_tasks"] / n for x in runs)
    cpu_hours = BRAIN_TRAIN_SLICES * cpu_slice / 3600  # CPU-hours on one core; / N on N idle cores
    tb = BRAIN_TRAIN_SLICES * disk["bytes_per_slice"] / 1e12
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {platform.platform()}",
        "mock": {"recon": list(recon), "kspace_rows": a.oversampling * recon[0], "widths": list(ints(a.widths)),
                 "coils": list(ints(a.coils)), "files": a.files, "slices": n, "raw_bytes": raw_bytes},
        "prep": {"matrix": [H, W], "virtual_coils": a.virtual_coils, "R": 4, "targets": m["has_targets"]},
        "slices_per_s": {"1 worker x 1 thread": rate[(1, 1)], f"{a.workers} workers x 1 thread": best,
                         f"1 worker x {a.workers} threads": rate[(1, a.workers)]},
        "per_worker_slices_per_s": best / a.workers,
        "speedup_workers": best / rate[(1, 1)], "speedup_threads": rate[(1, a.workers)] / rate[(1, 1)],
        "cpu_s": {"1 worker": cpu[(1, 1)], f"{a.workers} workers (total)": cpu[(a.workers, 1)],
                  f"{a.workers} workers: parent": parent}, "idle_estimate_s": {str(k): v for k, v in est.items()},
        "speedup_idle_estimate": idle_ratio,
        "identical_shards": same, "load_before": [round(x["load_before"], 2) for x in runs], "bytes_per_slice": disk["bytes_per_slice"],
        "raw_bytes_per_slice_at_matrix": disk["raw_bytes_per_slice_at_matrix"],
        "prepared_over_raw": disk["prepared_over_raw"], "prepared_over_raw_files": disk["bytes"] / raw_bytes,
        "cpu_s_per_slice": cpu_slice,
        "projection": {"slices": BRAIN_TRAIN_SLICES, f"hours_{a.workers}_workers_measured": hours,
                       "hours_1_worker_measured": hours1, "cpu_hours": cpu_hours,
                       f"hours_{a.workers}_idle_cores": cpu_hours / a.workers, "TB": tb},
    }
    print(f"\nmachine: {out['machine']}")
    print(f"mock folder: {a.files} files, {n} slices, k-space {a.oversampling * recon[0]} x {a.widths} "
          f"(reconSpace {recon[0]}x{recon[1]}), coils {a.coils}; prep: matrix {H}x{W}, {a.virtual_coils} virtual "
          f"coils, R=4, targets kept: {m['has_targets']}")
    print(f"{'configuration':<26}{'slices/s':>10}{'per worker':>12}{'vs 1 worker':>13}")
    for k, v in rate.items():
        print(f"{f'{k[0]} worker(s) x {k[1]} thread(s)':<26}{v:>10.3f}{v / k[0]:>12.3f}{v / rate[(1, 1)]:>12.2f}x")
    print(f"CPU seconds: 1 worker {cpu[(1, 1)]:.1f} s; {a.workers} workers {cpu[(a.workers, 1)]:.1f} s in all "
          f"(parent {parent:.2f} s); the tasks' CPU times scheduled on idle cores: {est[(1, 1)]:.1f} s vs "
          f"{est[(a.workers, 1)]:.1f} s = {idle_ratio:.2f}x")
    print(f"shards identical across runs: {same}")
    print(f"disk: {disk['bytes_per_slice'] / 1e6:.2f} MB/slice; raw k-space at the training matrix "
          f"{disk['raw_bytes_per_slice_at_matrix'] / 1e6:.2f} MB/slice (complex64, physical coils): prepared / raw = "
          f"{disk['prepared_over_raw']:.2f}x (vs the raw files incl. oversampling: {out['prepared_over_raw_files']:.2f}x)")
    print(f"projection, fastMRI brain train split ({BRAIN_TRAIN_SLICES} slices of this geometry and coil mix, this "
          f"CPU): {cpu_slice:.2f} CPU-s/slice = {cpu_hours:.1f} CPU-hours, {cpu_hours / a.workers:.1f} h on "
          f"{a.workers} idle cores ({cpu_hours / 16:.1f} h on 16); at the rate measured here {hours:.1f} h with "
          f"{a.workers} workers ({hours1:.1f} h with one); disk {tb:.2f} TB")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
