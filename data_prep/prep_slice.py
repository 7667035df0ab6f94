"""The work on one slice of a prepared set, and the task a ``prep`` worker process runs (a run of slices of one file).

Per slice: the file's geometry plan (``data_prep.geometry``: readout oversampling removed, the phase encode brought
to the training width in k-space), the slice's mask (the sampler's on the training matrix, seeded by (file, slice,
seed), times the measured columns; or the file's own mask brought along), then the one measurement model
(``MeasurementModel.condition``: prewhitening with the file's noise scan, scale, virtual coils, maps, noise level)
and the shard row (k-space, mask, density, maps, noise level, scale; targets in the same coils).

Everything here is a pure function of (file, slice, configuration): a slice comes out the same in any process,
and a task writes its own shard (``data_prep.shards``), which is what makes ``prep --workers N`` give the set of
one worker (``data_prep.parallel``) while the parent only records what the workers wrote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mri_diffusion.measurement import Measurement, choose_mask
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import ifft2c
from mri_diffusion.physics.masks import acs_block, seed_from
from mri_diffusion.physics.views import LowResView, centre_slices

from .fastmri_h5 import DataError, Volume, iter_kspace, noise_covariance
from .geometry import FilePlan
from .shards import ShardWriter, encode_chunk


@dataclass
class Job:
    """What every task needs (sent once to each worker): the configuration (``prepare.PrepConfig``), the accepted
    files, their geometry plans (None for view sets), per-file densities (1, 1, Wt), the view geometry, whether
    targets are kept, the output folder, the device."""

    cfg: object
    vols: list[Volume]
    plans: list[FilePlan | None]
    densities: list[np.ndarray]
    geo: dict | None
    with_targets: bool
    out_dir: Path
    device: str = "cpu"


_JOB: Job | None = None
_NOISE: dict[int, torch.Tensor] = {}  # file index -> noise covariance, per process


def set_job(job: Job, threads: int | None = None) -> None:
    """Install the job in this process (the pool's initializer; ``threads``: torch threads of a worker process,
    which also leaves Ctrl-C to the parent: it stops the pool and the run resumes later)."""
    global _JOB
    _JOB = job
    _NOISE.clear()
    if threads is not None:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(threads)


def run_task(task: tuple[int, int, int, int]) -> dict:
    """Task k = shard k: slices [start, stop) of file ``fi`` -> the shard file(s), written here. Returns what the
    parent records: {task, fi, stop, entry, target_entry (None: no slice), rows, skipped [{id, reason, task}],
    cpu_s (this process's CPU seconds for the task)}."""
    index, fi, start, stop = task
    job = _JOB
    cpu0 = time.process_time()
    vol = job.vols[fi]
    skipped = []
    with ShardWriter(job.out_dir, index, stop - start, job.with_targets) as w:
        for i, k_np in iter_kspace(vol, stop, start=start):
            if not np.any(k_np):
                skipped.append({"id": f"{vol.name}:{i}", "reason": "all-zero", "task": index})
                continue
            row = _prepare_slice(job, fi, i, k_np) if job.geo is None else _prepare_view_slice(job, fi, i, k_np)
            if job.cfg.compress:
                row["kspace"] = encode_chunk(row["kspace"])  # compressed here, in the worker
            w.add(row)
    return {"task": index, "fi": fi, "stop": stop, "entry": w.entry, "target_entry": w.target_entry,
            "rows": len(w.ids), "skipped": skipped, "cpu_s": time.process_time() - cpu0}


def _noise_cov(job: Job, fi: int) -> torch.Tensor | None:
    vol = job.vols[fi]
    if vol.noise_shape is None or not job.cfg.prewhiten:
        return None
    if fi not in _NOISE:
        _NOISE[fi] = torch.from_numpy(noise_covariance(vol))
    return _NOISE[fi]


def slice_mask(vol: Volume, index: int, cfg, sampler, plan: FilePlan | None = None) -> torch.Tensor:
    """The training mask of one slice on the training matrix: the file's own (brought along by ``plan``), else the
    sampler's seeded by (file, slice, seed) times the measured columns (``plan.support``)."""
    shape = vol.shape if plan is None else plan.matrix
    file_mask = vol.mask if plan is None or vol.mask is None else plan.apply_mask(vol.mask)
    mask = choose_mask(shape, sampler, seed_from(vol.name, index, cfg.seed), file_mask, cfg.use_file_mask,
                       name=f"{vol.path}: 'mask'")[0]
    support = None if plan is None else plan.support()
    if support is not None:
        mask = mask * torch.from_numpy(support)
    return mask


def _prepare_slice(job: Job, fi: int, index: int, k_np: np.ndarray) -> dict:
    cfg, vol, plan = job.cfg, job.vols[fi], job.plans[fi]
    k_full = torch.from_numpy(k_np).to(job.device)
    if plan is not None and not plan.identity:
        k_full = plan.apply(k_full)
    mask = slice_mask(vol, index, cfg, cfg.sampler(), plan).to(job.device)
    m = cfg.measurement_model().condition(
        k_full, mask, attrs=vol.attrs, where=f"{vol.path}: slice {index}", density=job.densities[fi],
        mask_name=f"the {cfg.mask_type} R={cfg.acceleration:g} mask" if vol.mask is None else "the file's mask",
        noise_cov=_noise_cov(job, fi))
    return _row(vol, index, m, _in_coils(m, k_full) if job.with_targets else None)


def _in_coils(m: Measurement, k: torch.Tensor) -> torch.Tensor:
    """Fully sampled raw k-space in the measurement's coils and units: T k / scale."""
    if m.coil_transform is not None:
        k = torch.einsum("vc,chw->vhw", m.coil_transform, k)
    return k / m.scale


def _prepare_view_slice(job: Job, fi: int, index: int, k_np: np.ndarray) -> dict:
    """One slice of a view set: the fully sampled view k-space (C, h, w), normalised like the full scan."""
    cfg, vol, geo = job.cfg, job.vols[fi], job.geo
    full, vshape = tuple(geo["full_shape"]), tuple(geo["view_shape"])
    H, W = vol.shape
    k = torch.from_numpy(k_np).to(job.device)
    view = LowResView(full, vshape)
    if geo["kind"] == "acs":
        mask = slice_mask(vol, index, cfg, cfg.sampler())
        want = centre_slices(W, vshape[1])
        if not bool(torch.all(mask.reshape(-1)[want] > 0)):
            lo, hi = acs_block(mask.reshape(-1))
            raise DataError(f"{vol.path}: slice {index}: the mask's fully sampled centre is columns [{lo}, {hi}), "
                            f"it does not contain the {vshape[1]} centre columns [{want.start}, {want.stop}) of "
                            f"view 'acs' (center_fraction of the configured sampler)")
    if (H, W) == full:
        k = view.crop_kspace(k)
    m = cfg.measurement_model().condition(
        k, None, attrs=vol.attrs, where=f"{vol.path}: slice {index}", mask_name=f"view {cfg.view!r}",
        density=job.densities[fi], scale_width=min(geo["scale_acs_width"], vshape[1]),
        amplitude=view.amplitude_scale, noise_cov=_noise_cov(job, fi))
    return _row(vol, index, m, m.kspace if job.with_targets else None)


def _row(vol: Volume, index: int, m: Measurement, full_k: torch.Tensor | None) -> dict:
    """The shard row of a conditioned slice and (``full_k``: fully sampled normalised k-space) its targets."""
    row = {"id": f"{vol.name}:{index}", "kspace": m.kspace.cpu().numpy(), "mask": m.mask.cpu().numpy(),
           "density": m.density, "maps": m.maps.cpu().numpy(), "noise_std": m.noise_std, "scale": m.scale}
    if full_k is not None:
        coil = ifft2c(full_k)
        row["target"] = torch.sum(m.maps.conj() * coil, dim=0).cpu().numpy()
        row["rss"] = rss(coil).float().cpu().numpy()
        for key in ("target", "rss"):
            if not np.all(np.isfinite(row[key])):
                raise DataError(f"{vol.path}: slice {index}: '{key}' contains NaN/Inf after preparation")
    return row
