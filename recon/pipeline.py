"""Volume-level reconstruction: fastMRI file -> conditioned slices -> method -> submission file + PNG.

Per slice, the one measurement model that ``prep`` uses too (``mri_diffusion.measurement``): the file's own mask
when it has one (test files), else a retrospective mask from the sampler, seeded by (file name, seed) so every
slice of a volume gets the same mask (fastMRI's validation convention); k-space divided by the ACS scale, optional
SVD coil compression, ESPIRiT maps, the noise level (given, the file's ``noise_std`` attribute, or estimated; a
failed estimate is an error naming the file and slice). The method's result is multiplied back by the scale, so
outputs are in the units of ``reconstruction_rss``, and centre-cropped to the fastMRI reconstruction size.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep.fastmri_h5 import DataError, Volume, iter_kspace, open_volume, write_reconstruction
from mri_diffusion.measurement import MeasurementModel, choose_mask
from mri_diffusion.physics.masks import make_sampler, seed_from
from mri_diffusion.physics.views import centre_crop

from . import baselines
from .figures import montage, save_png
from .samplers.common import SAMPLER_ALIASES


class OODWarning(UserWarning):
    """A slice looks unlike the prior's training set (``recon.guard``): the recon command prints it."""


@dataclass(frozen=True)
class MaskSpec:
    """Retrospective mask used when a file has none."""

    kind: str = "random"
    acceleration: float = 4.0
    center_fraction: float | None = None
    seed: int = 0

    def sampler(self):
        return make_sampler(self.kind, self.acceleration, self.center_fraction)


@dataclass
class SliceResult:
    image: torch.Tensor  # complex or real (H, W), normalised units (the pipeline multiplies by the scale)
    extra: dict = field(default_factory=dict)  # e.g. {'reconstruction_std': (H, W)}: written, scaled and cropped
    samples: torch.Tensor | None = None  # complex (K, H, W) posterior samples, normalised units; never written
    info: dict | None = None  # JSON-able per-slice record (e.g. the guard's choice); written to attr 'slice_info'


def volume_mask(vol: Volume, spec: MaskSpec) -> tuple[torch.Tensor, str]:
    """(1, 1, W) float32 mask for the volume and where it came from ('file' or 'retrospective')."""
    return choose_mask(vol.shape, spec.sampler(), seed_from(vol.name, spec.seed), vol.mask, name=f"{vol.path}: 'mask'")


def check_achievable(vol: Volume, spec: MaskSpec) -> None:
    """A retrospective 1-D mask cannot sample fewer columns than its fully sampled centre: refuse an -R above
    W / n_centre (fastMRI's samplers would silently fall back to the centre alone)."""
    if vol.mask is not None or spec.kind == "poisson":
        return
    W = vol.shape[1]
    n = spec.sampler().num_low_frequencies(W)
    if n * spec.acceleration > W:
        raise DataError(f"{vol.path}: -R {spec.acceleration:g} cannot be reached at k-space width {W}: the fully "
                        f"sampled centre alone ({n} of {W} columns, centre fraction {spec.sampler().cf:g}) gives "
                        f"R = {W / n:.3g}; use a smaller -R or --center-fraction")


def effective_acceleration(mask: torch.Tensor) -> float:
    """1 / (sampled fraction) of a (1, 1, W) or (1, H, W) mask."""
    return float(mask.numel() / mask.sum())


SliceMethod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], SliceResult]
"""(normalised masked k-space (C, H, W), mask, maps (C, H, W), context) -> SliceResult.

context: {'file': name, 'slice': index, 'noise_std': CN std of the normalised k-space}; the noise level is
conditioned only for methods with a true ``uses_noise_std`` attribute (posterior sampling), NaN for the others."""


def classical_method(name: str, sense_iters: int = 30, sense_lambda: float = 1e-2, l1_lambda: float = 1e-3,
                     l1_iters: int = 100) -> SliceMethod:
    """A per-slice function (normalised masked k-space, mask, maps) -> SliceResult.

    Weights act on ACS-normalised data. CG-SENSE without regularisation is semi-convergent (noise
    amplification after ~10 iterations on the real 8-coil brain at 4x: 27.4 dB at 10, 25.1 dB at 30), so
    the default adds a small Tikhonov term (lambda 0.01: 27.3 dB at 30 iterations, stable).
    """
    if name == "zero-filled":
        return lambda k, m, s, ctx: SliceResult(baselines.zero_filled(k))
    if name == "sense":
        return lambda k, m, s, ctx: SliceResult(baselines.cg_sense(k, m, s, iters=sense_iters, lam=sense_lambda))
    if name == "l1-wavelet":
        return lambda k, m, s, ctx: SliceResult(baselines.l1_wavelet(k, m, s, lam=l1_lambda, iters=l1_iters))
    raise ValueError(f"unknown method {name!r}; choose one of {baselines.METHODS}")


def reconstruct_volume(vol: Volume, method: SliceMethod, spec: MaskSpec, device: torch.device,
                       max_slices: int | None = None, progress: bool = True, needs_maps: bool = True,
                       virtual_coils: int | None = None, batch_slices: int = 1, noise_std: float | None = None) -> dict:
    """Reconstruct every slice of ``vol``. Returns {'reconstruction': (S, h, w) float32, extras, 'mask', ...}.

    ``virtual_coils``: SVD-compress multi-coil k-space with more coils than this to this many virtual coils
    per slice (``physics.compress``) before coil maps and the method; the kept energy share is returned.
    ``noise_std``: the k-space noise level in the file's units (default: the file's attribute, else estimated).
    ``batch_slices``: methods with a ``batch`` attribute (posterior sampling) get this many slices at once
    (on a GPU, slices x samples fill the device; results are the same as slice by slice).
    """
    from tqdm import tqdm

    if batch_slices < 1:
        raise ValueError(f"batch_slices must be >= 1, got {batch_slices}")
    mask, mask_source = volume_mask(vol, spec)
    mask = mask.to(device)
    which = f"{vol.path}: 'mask'" if mask_source == "file" else f"the retrospective {spec.kind} mask"
    model = MeasurementModel(noise_std=noise_std, virtual_coils=virtual_coils if vol.multicoil else None,
                             maps=needs_maps and vol.multicoil, noise=getattr(method, "uses_noise_std", False))
    n = vol.num_slices if max_slices is None else min(vol.num_slices, max_slices)
    recs: list = [None] * n
    extras: dict[str, list] = {}
    kept: list[float] = []
    infos: list = [None] * n
    pending: list[tuple] = []  # (slice index, scale, (k, mask, maps, ctx))
    batched = batch_slices > 1 and hasattr(method, "batch")

    def flush():
        if not pending:
            return
        items = [it for _, _, it in pending]
        results = method.batch(items) if batched else [method(*it) for it in items]
        for (i, scale, _), res in zip(pending, results):
            img = (torch.abs(res.image) * scale).float().cpu().numpy()
            if not np.all(np.isfinite(img)):
                raise DataError(f"{vol.path}: slice {i} reconstruction contains NaN/Inf; nothing written for this file")
            recs[i] = centre_crop(img, vol.recon_size)
            if res.info is not None:
                infos[i] = {**res.info, "scale": float(scale)}
                if res.info.get("ood_flag"):
                    nan = float("nan")
                    warnings.warn(f"{vol.path}: slice {i}: out-of-distribution flag: the denoiser changes it "
                                  f"{res.info.get('ood_score_ratio', nan):.2g} x as much as the prior's own "
                                  f"validation slices; held-out error {res.info.get('ood_db', nan):+.2f} dB against "
                                  f"the best classical, {res.info.get('calibration_ratio', nan):.2g} x the "
                                  f"posterior's own prediction; {res.info.get('reason', '')}", OODWarning)
            for key, v in res.extra.items():
                extras.setdefault(key, [None] * n)[i] = centre_crop((v * scale).float().cpu().numpy(), vol.recon_size)
        pending.clear()

    t0 = time.perf_counter()
    bar = tqdm(iter_kspace(vol, n), total=n, desc=vol.name, unit="slice", disable=not progress, leave=False)
    for i, k_np in bar:
        k = torch.from_numpy(k_np).to(device)
        if not torch.any(k != 0):
            warnings.warn(f"{vol.path}: slice {i} is all zero; writing zeros")
            recs[i] = np.zeros(vol.recon_size, np.float32)
            continue
        # retrospective undersampling (a no-op for test files, which are already masked), scale, maps, noise
        m = model.condition(k, mask, attrs=vol.attrs, where=f"{vol.path}: slice {i}", mask_name=which)
        if m.coil_energy_kept is not None:
            kept.append(m.coil_energy_kept)
        ctx = {"file": vol.name, "slice": i, "noise_std": m.noise_std}
        pending.append((i, m.scale, (m.kspace, m.mask, m.maps, ctx)))
        if len(pending) >= (batch_slices if batched else 1):
            flush()
    flush()
    result = {"reconstruction": np.stack(recs).astype(np.float32)}
    for key, vals in extras.items():  # all-zero slices have no extras: zeros shaped like the others
        like = next(v for v in vals if v is not None)
        result[key] = np.stack([np.zeros_like(like) if v is None else v for v in vals]).astype(np.float32)
    if any(v is not None for v in infos):
        result["slice_info"] = infos
    if kept:
        result["virtual_coils"] = int(virtual_coils)
        result["coil_energy_kept"] = float(min(kept))
    # 1-D masks as fastMRI stores them, (W,); 2-D (e.g. Poisson) masks as (H, W)
    result["mask"] = (mask[0, 0] if mask.shape[-2] == 1 else mask[0]).cpu().numpy()
    result["mask_source"] = mask_source
    result["effective_acceleration"] = effective_acceleration(mask)
    result["seconds"] = time.perf_counter() - t0
    result["num_slices"] = n
    return result


@dataclass
class RunResult:
    """What :func:`run` did: files written, finished files skipped (same settings), inputs that failed
    (path, reason), and the effective acceleration of each file reconstructed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    effective: dict[str, float] = field(default_factory=dict)

    def used_line(self, label: str, what: str, spec: MaskSpec) -> str:
        """One line: the method and its settings, the mask, requested and effective acceleration."""
        eff = sorted(self.effective.values())
        eff_txt = ("none reconstructed" if not eff else f"{eff[0]:.3g}" if len(eff) == 1
                   else f"{eff[0]:.3g}..{eff[-1]:.3g} over {len(eff)} files")
        cf = "" if spec.center_fraction is None else f", centre fraction {spec.center_fraction:g}"
        return (f"used: {label} ({what}); mask {spec.kind}{cf} (files with their own 'mask' use it), "
                f"R {spec.acceleration:g} requested, effective {eff_txt}; mask seed {spec.seed}")

    def failure_text(self, total: int) -> str:
        lines = [f"{len(self.failed)} of {total} input(s) failed; nothing was written for them:"]
        return "\n".join(lines + [f"  - {why}" for _, why in self.failed])


class RunFailed(DataError):
    """Some inputs failed (the message lists them); ``result`` is what the run did."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(path: Path, settings: dict) -> bool:
    """True when ``path`` was written with ``settings``; FileExistsError naming what differs otherwise."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            old = json.loads(f.attrs.get("settings", "{}"))
            same = f.attrs.get("settings_fingerprint") == fingerprint(settings)
    except (OSError, ValueError):
        old, same = {}, False
    if not same and old.get("sampler") in SAMPLER_ALIASES:  # made before the sampler's rename (cg -> dds)
        old["sampler"] = SAMPLER_ALIASES[old["sampler"]]
        same = fingerprint(old) == fingerprint(settings)
    if same:
        return True
    diff = [f"{k}: {old.get(k, 'not recorded')} -> {settings[k]}" for k in sorted(settings) if old.get(k) != settings[k]]
    raise FileExistsError(f"{path} exists and was made with other settings ({'; '.join(diff[:4])}); pass "
                          "--overwrite to redo it, or choose another --out")


def run(inputs, out_dir: str | Path, method_name: str, method: SliceMethod, spec: MaskSpec,
        device: torch.device, overwrite: bool = False, max_slices: int | None = None, progress: bool = True,
        expect: str | None = None, strict: bool = False, attrs: dict | None = None,
        needs_maps: bool = True, virtual_coils: int | None = None, batch_slices: int = 1,
        keep_going: bool = False, settings: dict | None = None, noise_std: float | None = None) -> RunResult:
    """Reconstruct files/folders into ``out_dir`` (submission layout + ``<stem>.png``).

    Before any work: every input is opened and checked, two inputs with the same file name (they would write
    the same output) are refused naming both, and an input that cannot be read stops the run with a list of
    every such input and why (``RunFailed``), unless ``keep_going``. An output that exists is skipped when it
    was made with the same settings (its ``settings_fingerprint`` attr: re-running after an interrupt resumes),
    redone with ``overwrite``, and refused naming the file and what differs otherwise. An input that fails
    during reconstruction (NaN in a slice, ...) gets no output; the others are still done, and the run then
    raises ``DataError`` listing every failure, unless ``keep_going`` (the failures are in the result).
    ``settings``: method settings for the fingerprint (with the mask, method name and slice limit).
    ``noise_std``: the k-space noise level in the files' units for every file (default: each file's ``noise_std``
    attribute, else estimated per slice); recorded in the settings when given.
    """
    from data_prep.fastmri_h5 import list_h5

    out_dir = Path(out_dir)
    res = RunResult()
    files = list_h5(inputs, strict=strict, errors=res.failed)
    by_name: dict[str, Path] = {}
    for f in files + [p for p, _ in res.failed]:
        if f.name in by_name:
            raise DataError(f"two inputs have the same file name and would write the same output "
                            f"{out_dir / f.name}: {by_name[f.name]} and {f}; reconstruct them into different --out "
                            "folders")
        by_name[f.name] = f
    total = len(by_name)
    if not total:
        raise DataError(f"no .h5 files in {', '.join(map(str, inputs if isinstance(inputs, (list, tuple)) else [inputs]))}")
    base = {"method": method_name, "mask": spec.kind, "acceleration": spec.acceleration,
            "center_fraction": spec.center_fraction, "mask_seed": spec.seed, "max_slices": max_slices,
            "virtual_coils": virtual_coils, **({} if noise_std is None else {"noise_std": noise_std}), **(settings or {})}
    todo = []
    for f in files:
        try:
            vol = open_volume(f, expect=expect)
            check_achievable(vol, spec)
        except DataError as e:
            res.failed.append((f, str(e)))
            continue
        wanted = {**base, "input": str(f.resolve())}
        out = out_dir / f.name
        if out.exists() and not overwrite and _finished(out, wanted):
            res.skipped.append(out)
            continue
        todo.append((f, vol, wanted))
    if res.failed and not keep_going:
        raise RunFailed(res.failure_text(total) + "\nnothing was reconstructed; pass --keep-going to reconstruct "
                        "the other inputs anyway", res)
    for f, vol, wanted in todo:
        try:
            r = reconstruct_volume(vol, method, spec, device, max_slices=max_slices, progress=progress,
                                   needs_maps=needs_maps, virtual_coils=virtual_coils, batch_slices=batch_slices,
                                   noise_std=noise_std)
        except DataError as e:
            if strict:
                raise
            res.failed.append((f, str(e)))
            continue
        res.written.append(_write(out_dir / f.name, vol, r, method_name, spec, attrs, wanted, overwrite))
        res.effective[f.name] = r["effective_acceleration"]
    if res.failed and not keep_going:
        raise RunFailed(res.failure_text(total) + f"\n{len(res.written)} file(s) written to {out_dir}, "
                        f"{len(res.skipped)} already finished; pass --keep-going to accept a partial result", res)
    if not res.written and not res.skipped:
        raise RunFailed(res.failure_text(total) + "\nno file could be reconstructed", res)
    return res


def _write(path: Path, vol: Volume, res: dict, method_name: str, spec: MaskSpec, attrs: dict | None,
           settings: dict, overwrite: bool) -> Path:
    """The submission file (reconstruction, extras, mask; attrs with requested and effective R, settings and
    their fingerprint) and its PNG montage."""
    extra = {k: v for k, v in res.items() if k.startswith("reconstruction_")}
    extra["mask"] = res["mask"]
    meta = {"method": method_name, "acceleration": float(spec.acceleration) if res["mask_source"] != "file"
            else float(vol.attrs.get("acceleration", 0) or 0),
            "effective_acceleration": res["effective_acceleration"],
            "mask_source": res["mask_source"], "mask_type": spec.kind, "seed": spec.seed,
            "seconds_per_slice": res["seconds"] / max(1, res["num_slices"]), **(attrs or {}),
            "settings": json.dumps(settings, sort_keys=True, default=str), "settings_fingerprint": fingerprint(settings)}
    if "slice_info" in res:
        meta["slice_info"] = json.dumps(res["slice_info"], default=float)
        flags = [bool(v and v.get("ood_flag")) for v in res["slice_info"]]
        meta["ood_flags"] = sum(flags)
    if "virtual_coils" in res:
        meta["virtual_coils"] = res["virtual_coils"]
        meta["coil_energy_kept"] = res["coil_energy_kept"]
    if res["num_slices"] < vol.num_slices:
        meta["first_slices"] = res["num_slices"]  # evaluate scores these against the first target slices
    write_reconstruction(path, res["reconstruction"], extra=extra, attrs=meta, overwrite=overwrite)
    rec = res["reconstruction"]
    R = f"R={meta['acceleration']:g} (effective {meta['effective_acceleration']:.3g})"
    save_png(path.with_suffix(".png"), montage(rec), vmax=float(rec.max()) or 1.0,
             title=f"{path.name}  {method_name}  {R}", overwrite=True)
    return path
