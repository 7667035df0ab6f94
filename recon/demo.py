"""The main job on the built-in real anatomy, end to end:

simulate 8-coil k-space from Colin27 -> prep the training block (4x undersampled, noisy; no clean image
is used by training) -> train a GSURE prior within a time budget -> reconstruct the held-out test block at
4x and 8x with the prior and the classical baselines (same masks) -> evaluate (fastMRI protocol) -> report.
Stages that already finished are reused; ``fresh`` starts over. Progress lines go to ``log`` (default: one line
on stderr); ``mridiff demo`` passes its own and prints the returned summary table and report path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from .experiment import baseline_methods, prior_method, run_methods, stage

ROOT = Path(__file__).resolve().parents[1]


def run_demo(source: Path, out_dir: Path, accelerations: list[float], max_slices: int | None = None,
             fresh: bool = False, device: torch.device = torch.device("cpu"), minutes: float = 8.0,
             samples: int = 2, train: bool = True, sim_config=None, l1_grid=(3e-4, 1e-3, 3e-3),
             log: Callable[[str], None] = stage) -> dict:
    """Run (or resume) the demo in ``out_dir``; returns {'report': path of report.html, 'summary': the table as
    text (mean +- 2 std over the test volumes per method and acceleration, fastMRI protocol)}."""
    from data_prep.prepare import PrepConfig, prepare
    from data_prep.simulate import SimConfig, simulate
    from mri_diffusion.config import TrainConfig
    from recon.evaluate import evaluate_dirs
    from recon.evaluation import summary_text

    out_dir = Path(out_dir)
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    data = out_dir / "data"
    if not (data / "simulation.json").exists():
        if not Path(source).exists():
            raise FileNotFoundError(
                f"{source}: not found. Install Debian's 'mricron-data' package (Colin27) or pass --source NIfTI.")
        log(f"simulate 8-coil k-space from {source}")
        simulate(source, data, sim_config or SimConfig(), overwrite=True)
    else:
        log(f"reuse simulated data in {data}")
    methods = baseline_methods(data / "multicoil_val", accelerations, device, grid=l1_grid, max_slices=1,
                               log=lambda R, lam, _: log(f"L1-wavelet weight at R={R:g} (tuned on validation "
                                                         f"slices): {lam:g}"))
    if train:
        prep = out_dir / "prep_r4"
        if not (prep / "manifest.json").exists():
            log("prep the training block: 4x random masks, ACS normalisation, ESPIRiT maps, noise level")
            prepare([data / "multicoil_train"], prep, PrepConfig(acceleration=4.0), overwrite=True)
        run_dir = out_dir / "train_gsure_r4"
        ckpt = run_dir / "checkpoint.pt"
        if not (run_dir / ".done").exists():
            from mri_diffusion.train.loop import train as run_train

            cfg = TrainConfig.from_yaml(ROOT / "configs" / "demo.yaml")
            log(f"train a GSURE prior from undersampled k-space only ({minutes:g} min budget)")
            run_train(cfg, prep, run_dir, resume=ckpt.exists(), device=device, minutes=minutes)
            (run_dir / ".done").touch()
        methods.append(prior_method("diffusion-gsure-demo", ckpt, device, samples=samples))
    from mri_diffusion.priors import ABOUT, SHIPPED

    if SHIPPED["builtin"].exists():
        log(f"built-in prior: {ABOUT['builtin']} (another contrast and anatomy than this demo's Colin27 T1 head)")
        methods.append(prior_method("diffusion-builtin", "builtin", device, samples=samples))
    run_methods(data / "multicoil_test", out_dir / "recon", methods, accelerations, device, max_slices=max_slices,
                log=log)
    log("evaluate (fastMRI protocol)")
    evaluate_dirs(out_dir / "recon", data / "multicoil_test", out_dir / "eval", protocol="fastmri", overwrite=True,
                  title="mri-diffusion demo: Colin27, simulated 8-coil k-space")
    summary = summary_text(json.loads((out_dir / "eval" / "metrics.json").read_text()))
    return {"report": out_dir / "eval" / "report.html", "summary": summary}
