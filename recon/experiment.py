"""Run several reconstruction methods on the same files and masks, then evaluate them together.

Used by ``mridiff demo`` and ``benchmarks/table.py`` / ``recon_quality.py``: every method sees the same
retrospective mask per volume (seeded by file name), so the comparison is paired. The L1-wavelet weight is tuned
on validation slices only (never on the test block). Progress lines go to ``log`` (default :func:`stage`: one
line on stderr); the CLI passes its own.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep.fastmri_h5 import list_h5, open_volume, read_target
from .pipeline import MaskSpec, SliceMethod, classical_method, reconstruct_volume, run


def stage(msg: str) -> None:
    """The default progress line: ``==> msg`` on stderr."""
    print(f"==> {msg}", file=sys.stderr, flush=True)


@dataclass
class Method:
    name: str
    make: Callable[[float], SliceMethod]  # acceleration -> slice method
    needs_maps: bool = True
    attrs: dict = field(default_factory=dict)
    virtual_coils: int | None = None  # SVD-compress scans with more coils to this many (None: off)
    settings: Callable[[float], dict] | None = None  # acceleration -> per-R settings (e.g. the tuned L1 weight)


def run_methods(test_dir: Path, out_root: Path, methods: list[Method], accelerations: list[float],
                device: torch.device, mask_kind: str = "random", seed: int = 0, max_slices: int | None = None,
                progress: bool = True, reuse: bool = True, log: Callable[[str], None] = stage) -> Path:
    """Reconstruct ``test_dir`` with every method at every acceleration into out_root/<method>_R<R>/.

    A finished folder is reused only when its ``.done`` holds the same settings (method attrs and per-R
    settings, data folder, masks, slices, virtual coils); otherwise it is redone. Each file records the code
    commit it was made at (``code_commit``)."""

    commit = git_commit()
    for R in accelerations:
        for m in methods:
            dest = out_root / f"{m.name}_R{R:g}"
            extra = m.settings(R) if m.settings else {}
            fingerprint = json.dumps({"data": str(Path(test_dir).resolve()), "R": R, "mask": mask_kind, "seed": seed,
                                      "max_slices": max_slices, "virtual_coils": m.virtual_coils,
                                      "attrs": m.attrs, "settings": extra}, sort_keys=True, default=str)
            done = dest / ".done"
            if reuse and done.exists() and done.read_text() == fingerprint:
                log(f"reuse {m.name} R={R:g}")
                continue
            log(f"reconstruct {test_dir.name}: {m.name}, R={R:g}")
            run([test_dir], dest, m.name, m.make(R), MaskSpec(mask_kind, R, None, seed), device, overwrite=True,
                max_slices=max_slices, progress=progress, needs_maps=m.needs_maps,
                attrs={**m.attrs, **extra, "code_commit": commit}, virtual_coils=m.virtual_coils)
            done.write_text(fingerprint)
    return out_root


L1_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # L1-wavelet weights tried on validation (ACS-normalised data)


def tune_l1_lambda(val_dir: Path, acceleration: float, device: torch.device, grid=L1_GRID,
                   max_slices: int = 2, iters: int = 100, seed: int = 0, mask_kind: str = "random"
                   ) -> tuple[float, dict]:
    """Pick the L1-wavelet weight with the best mean PSNR on validation slices (volume max as range)."""
    files = list_h5(val_dir)
    scores: dict[float, list[float]] = {lam: [] for lam in grid}
    for f in files:
        vol = open_volume(f)
        target, _ = read_target(f)
        n = min(max_slices, vol.num_slices)
        target = target[:n]
        for lam in grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = reconstruct_volume(vol, classical_method("l1-wavelet", l1_lambda=lam, l1_iters=iters),
                                         MaskSpec(mask_kind, acceleration, None, seed), device, max_slices=n,
                                         progress=False)
            rec = res["reconstruction"]
            mse = float(np.mean((rec - target) ** 2))
            scores[lam].append(10 * np.log10(float(target.max()) ** 2 / mse))
    mean = {lam: float(np.mean(v)) for lam, v in scores.items()}
    best = max(mean, key=mean.get)
    return best, mean


def baseline_methods(val_dir: Path, accelerations: list[float], device: torch.device,
                     grid=L1_GRID, max_slices: int = 2, log: Callable[[float, float, dict], None] | None = None,
                     mask_kind: str = "random") -> list[Method]:
    """zero-filled, CG-SENSE and L1-wavelet, the L1 weight tuned per acceleration on ``val_dir`` (never on the
    test block) and recorded with its outputs; ``log(R, weight, val PSNR per weight)`` reports each choice."""
    lams = {}
    for R in accelerations:
        lams[R], scores = tune_l1_lambda(val_dir, R, device, grid=grid, max_slices=max_slices, mask_kind=mask_kind)
        if log is not None:
            log(R, lams[R], scores)
    return [Method("zero-filled", lambda R: classical_method("zero-filled"), needs_maps=False),
            Method("sense", lambda R: classical_method("sense")),
            Method("l1-wavelet", lambda R: classical_method("l1-wavelet", l1_lambda=lams[R]),
                   settings=lambda R: {"l1_lambda": lams[R]})]


def prior_method(name: str, checkpoint, device: torch.device, sampler: str = "dds", steps: int | None = None,
                 samples: int = 4, options: dict | None = None, **schedule) -> Method:
    """A ``Method`` that reconstructs by posterior sampling with the prior in ``checkpoint`` (``builtin`` too).
    ``schedule``: sigma_max / sigma_min / rho overrides of the sampler's noise levels (``DiffusionRecon``), so
    ``prior_method(name, ckpt, dev, samples=4, **diffusion.FEW_STEP)`` runs the few-step recipe.

    The output files carry the prior, its training step, the sampler and the number of network calls per
    posterior sample (the batch of ``samples`` draws shares each call)."""
    from .diffusion import DEFAULT_VIRTUAL_COILS, DiffusionRecon, load_prior

    net, cfg, ck = load_prior(checkpoint, device)
    rec = DiffusionRecon(net, sampler, steps, samples, 0, False, dict(options or {}), **schedule)
    return Method(name, lambda R: rec,
                  attrs={"prior": str(checkpoint), "prior_step": int(ck["step"]), "sampler": rec.sampler,
                         "samples": samples, "network_calls_per_sample": rec.calls_per_sample,
                         **({"sigmas": rec.sigmas_attr, "sampler_options": json.dumps(dict(options or {}))}
                            if schedule or options else {})},
                  virtual_coils=DEFAULT_VIRTUAL_COILS)


def machine_line(device: torch.device) -> str:
    """The machine a measurement ran on, for benchmark records."""
    import platform

    text = (f"{platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {device}")
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


def git_commit(root: Path | None = None) -> str:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=root or Path(__file__).resolve().parents[1])
    return out.stdout.strip() or "unknown"
