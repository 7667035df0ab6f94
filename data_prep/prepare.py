"""fastMRI ``.h5`` files -> a prepared training set: masked, normalised k-space + mask + density + coil maps
+ noise level per slice, in shards, with a manifest (format: ``mri_diffusion.data``).

Geometry (``data_prep.geometry``): a folder of mixed files (readout oversampling, widths, coil counts) becomes one
set at one training matrix (``matrix``, default from the headers) and one coil count (``virtual_coils``, SVD;
required when the files' coil counts differ). Files that cannot be brought there are refused, naming file and
reason, before any work (``skip_refused``: prepare the others and list them in the manifest's ``refused``).
Files with a noise scan (``noise``, an extension: fastMRI has none) are prewhitened (``prewhiten``). The
manifest records per file its shape, coils and what was done (``sources[i].geometry``).

Per slice (streamed, one slice in memory), the one measurement model that ``recon`` uses too
(``mri_diffusion.measurement``): the file's own ``mask`` when it has one (such a file is undersampled data and
has no clean target), else a retrospective mask from the sampler, seeded by (file name, slice, seed) so that
every slice gets its own, reproducible mask; the masked k-space divided by the ACS scale; ESPIRiT coil maps
(``calib_rows``); the noise level ``noise_std`` = sigma_y (CN std per k-space entry, normalised units) from
``PrepConfig.noise_std`` (raw units), else the file's ``noise_std`` attribute (``use_file_noise_std``), else
estimated from measured entries only. The density of files with their own mask is that of the sampler the
config describes (same kind and acceleration): the files carry one mask each, not their sampler.

Targets (only when the source is fully sampled and ``keep_targets``): the SENSE-combined image
x = sum_c conj(S_c) ifft2c(k_full / scale)_c and the RSS image of k_full / scale, stored under
``targets/`` so that deleting that folder leaves the self-supervised set intact.

Views (``view``, for view models; X. Ma 2025, "Bootstrapping Diffusion"): the set holds what a partial
isometry V sees of each scan, fully sampled, at the view's matrix: ``lowres:F`` keeps the centred
(F H, F W) block of k-space (a full-resolution file is cropped; a low-resolution scan whose matrix already
is that block is taken as it is; ``full_matrix`` names the full-resolution matrix, default the files' own);
``acs`` keeps all rows x the fully sampled centre columns of each slice's training mask (the file's own
mask, else the sampler's). The scale is the full scan's rule applied to the view: the ACS image of the
centre round(W cf) columns (the full-resolution training set's ACS width) divided by the view's amplitude
factor sqrt(H W / (h w)), so that a view image equals V applied to the normalised full image. Targets
(the SENSE-combined view image) are kept, the view being fully sampled: view models train with ``dsm``.
The manifest's ``view`` entry records kind, full and view shapes.

Scale: ``workers`` processes prepare and write shards in parallel (``data_prep.parallel``, results recorded in
file order, so the set is the one a single worker writes, bit for bit); a worker holds one slice at a time, the
parent only metadata, whatever the number of files; progress over files and slices. The manifest's ``run`` entry holds the rate (slices/s, per
worker) and ``disk`` the bytes per slice and the ratio to the raw k-space at the training matrix.

Shards: a shard holds consecutive slices of one file (at most ``shard_size``) and is written by the worker that
prepares them (``data_prep.shards``); the parent records them in file order.

Resume: ``manifest.partial.json`` records the finished shards after each one; a re-run with the same
configuration continues after the last finished shard (``data_prep.shards``), with any number of workers.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from mri_diffusion import __version__
from mri_diffusion.atomic import atomic_write_text
from mri_diffusion.data import FORMAT_VERSION, MANIFEST, PARTIAL_MANIFEST
from mri_diffusion.measurement import NOISE_RULE, SCALE_RULE, MeasurementModel, noise_source
from mri_diffusion.physics.masks import default_center_fraction, make_sampler, num_low_frequencies
from mri_diffusion.physics.views import parse_view, view_shape_for

from . import geometry, prep_slice, shards
from .fastmri_h5 import DataError, Volume, list_h5, open_volume
from .parallel import ordered_map

@dataclass(frozen=True)
class PrepConfig:
    mask_type: str = "random"
    acceleration: float = 4.0
    center_fraction: float | None = None  # None: fastMRI default (0.08 below 8x, 0.04 from 8x)
    seed: int = 0
    use_file_mask: bool = True  # a file's own 'mask' wins; False: sampler mask x file mask (what was measured)
    noise_std: float | None = None  # raw k-space units (CN std per entry); None: file attribute or estimate
    shard_size: int = 64
    max_slices_per_file: int | None = None
    keep_targets: bool = True
    view: str | None = None  # None (full images) or a view: 'lowres:F' (k-space centre, F of the matrix) or 'acs'
    full_matrix: tuple[int, int] | None = None  # views: the full-resolution matrix (default: the files' own)
    calib_rows: int = 24
    use_file_noise_std: bool = True  # a file's 'noise_std' attribute (data_prep.simulate) when noise_std is None
    matrix: tuple[int, int] | None = None  # training matrix (Ht, Wt); None: from the headers (data_prep.geometry)
    virtual_coils: int | None = None  # SVD-compress every slice to this many coils; required for mixed coil counts
    prewhiten: bool = True  # files with a noise scan: whiten the coils with its covariance (noise level 1)
    compress: bool = True  # gzip the masked k-space in the shards (lossless; mostly zeros off the mask)

    def __post_init__(self):
        make_sampler(self.mask_type, self.acceleration, self.center_fraction)  # validates kind / acceleration
        if self.view is not None:
            parse_view(self.view)  # validates
        for name in ("full_matrix", "matrix"):
            value = getattr(self, name)
            if value is not None:
                fm = tuple(int(v) for v in value)
                if len(fm) != 2 or min(fm) < 1:
                    raise ValueError(f"{name} must be two positive sizes (H, W), got {value}")
                object.__setattr__(self, name, fm)
        if self.view is not None and (self.matrix is not None or self.virtual_coils):
            raise ValueError("matrix / virtual_coils normalise full-image sets; a view set takes files of one "
                             "geometry (full_matrix names the full-resolution matrix)")
        if self.virtual_coils is not None and int(self.virtual_coils) < 1:
            raise ValueError(f"virtual_coils must be >= 1, got {self.virtual_coils}")
        if int(self.shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.max_slices_per_file is not None and int(self.max_slices_per_file) < 1:
            raise ValueError(f"max_slices_per_file must be >= 1, got {self.max_slices_per_file}")
        if self.noise_std is not None and not float(self.noise_std) > 0:
            raise ValueError(f"noise_std must be > 0, got {self.noise_std}")
        if int(self.calib_rows) < 4:
            raise ValueError(f"calib_rows must be >= 4, got {self.calib_rows}")

    def sampler(self):
        return make_sampler(self.mask_type, self.acceleration, self.center_fraction)

    def measurement_model(self) -> MeasurementModel:
        return MeasurementModel(calib_rows=self.calib_rows, noise_std=self.noise_std,
                                use_file_noise_std=self.use_file_noise_std, virtual_coils=self.virtual_coils)


def prepare_config_from_args(**kwargs) -> PrepConfig:
    """PrepConfig from CLI-style keyword arguments; ``None`` means "default", unknown names are errors."""
    names = {f.name: f for f in fields(PrepConfig)}
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"unknown prep option(s) {unknown}; known: {sorted(names)}")
    casts = {"acceleration": float, "seed": int, "shard_size": int, "max_slices_per_file": int,
             "noise_std": float, "center_fraction": float, "calib_rows": int, "virtual_coils": int}
    clean = {k: (casts[k](v) if k in casts else v) for k, v in kwargs.items() if v is not None}
    return PrepConfig(**clean)


def _plans(vols: list[Volume], cfg: PrepConfig, skip_refused: bool):
    """Geometry plans of the files, the training matrix and the refused files ({file, slices, reason})."""
    if cfg.view is not None:  # view sets: files of one geometry, as they are
        for v in vols[1:]:
            a, b = (v.num_coils, *v.shape), (vols[0].num_coils, *vols[0].shape)
            if a != b:
                raise DataError(f"{v.path}: k-space shape (coils, H, W) {a} differs from {b} of {vols[0].path}; "
                                f"all files of a view set must share (coils, H, W)")
        return vols, [None] * len(vols), None, []
    counts = sorted({v.num_coils for v in vols})
    if len(counts) > 1 and not cfg.virtual_coils:
        raise DataError(f"the files have different coil counts ({', '.join(map(str, counts))}: e.g. "
                        f"{next(v.path for v in vols if v.num_coils == counts[0])} has {counts[0]}, "
                        f"{next(v.path for v in vols if v.num_coils == counts[-1])} has {counts[-1]}); one set "
                        f"needs one coil count: pass virtual_coils (--virtual-coils N, SVD compression; files with "
                        f"fewer than N coils are refused)")
    matrix = cfg.matrix or geometry.default_matrix(vols)
    kept, plans, refused = [], [], []
    for v in vols:
        plan = geometry.plan_file(v, matrix, cfg.virtual_coils)
        if isinstance(plan, str):
            refused.append({"file": v.name, "path": str(v.path), "slices": v.num_slices, "reason": plan})
        else:
            kept.append(v)
            plans.append(plan)
    if refused and not skip_refused:
        lines = "\n".join(f"  {r['path']}: {r['reason']}" for r in refused)
        raise DataError(f"{len(refused)} file(s) ({sum(r['slices'] for r in refused)} slices) cannot be brought to "
                        f"the training matrix {matrix[0]}x{matrix[1]}"
                        f"{f' with {cfg.virtual_coils} virtual coils' if cfg.virtual_coils else ''}; pass "
                        f"--skip-refused to prepare the others without them:\n{lines}")
    if not kept:
        raise DataError(f"every file was refused (training matrix {matrix[0]}x{matrix[1]})")
    return kept, plans, matrix, refused


def _open_sources(inputs, cfg: PrepConfig, strict: bool, skip_refused: bool = False):
    files = list_h5(list(inputs) if isinstance(inputs, (list, tuple)) else [inputs], strict=strict)
    if not files:
        raise DataError(f"no readable .h5 files in {inputs}")
    vols, seen = [], {}
    for p in files:
        vol = open_volume(p)
        if vol.name in seen:
            raise DataError(f"{p}: same file name as {seen[vol.name]}; slice ids 'file.h5:slice' must be unique")
        seen[vol.name] = p
        vols.append(vol)
    vols, plans, matrix, refused = _plans(vols, cfg, skip_refused)
    sources = []
    for vol, plan in zip(vols, plans):
        p = vol.path
        own_mask = cfg.use_file_mask and vol.mask is not None
        if vol.mask is not None and cfg.mask_type == "poisson":
            raise DataError(f"{p}: has its own 1-D mask, but mask_type 'poisson' (2-D) cannot describe its "
                            f"density; use mask_type random or equispaced")
        if own_mask and vol.attrs.get("acceleration") not in (None, 0) and \
                abs(float(vol.attrs["acceleration"]) - cfg.acceleration) > 1e-6:
            warnings.warn(f"{p}: file acceleration {vol.attrs['acceleration']} != configured {cfg.acceleration}; "
                          f"its density uses the configured sampler")
        whiten = cfg.prewhiten and vol.noise_shape is not None
        noise = "noise scan (prewhitened)" if whiten else noise_source(cfg.noise_std, cfg.use_file_noise_std,
                                                                        vol.attrs)
        used = vol.num_slices if cfg.max_slices_per_file is None else min(vol.num_slices, cfg.max_slices_per_file)
        src = {"file": vol.name, "num_slices": vol.num_slices, "used_slices": used,
               "multicoil": vol.multicoil, "num_coils": vol.num_coils, "shape": [vol.num_coils, *vol.shape],
               "mask_source": "file" if own_mask else "retrospective" if vol.mask is None else
               "retrospective x file", "noise_source": noise}
        if plan is not None:
            n = cfg.virtual_coils
            src["geometry"] = {**plan.describe(), "encoded_size": list(vol.header.encoding_size[:2]) if vol.header
                               else None, "recon_size": list(vol.header.recon_size[:2]) if vol.header else None,
                               "coils": f"{vol.num_coils} -> {n} virtual (SVD)" if n and vol.num_coils > n
                               else f"{vol.num_coils} kept"}
        sources.append(src)
    return vols, plans, sources, matrix, refused


def view_geometry(cfg: PrepConfig, file_shape: tuple[int, int], path) -> dict | None:
    """The view a prepared set holds: kind, full/view shapes, ACS width used for the scale; None without view."""
    if cfg.view is None:
        return None
    kind, frac = parse_view(cfg.view)
    full = tuple(cfg.full_matrix) if cfg.full_matrix is not None else tuple(file_shape)
    cf = cfg.center_fraction if cfg.center_fraction is not None else default_center_fraction(cfg.acceleration)
    acs_w = max(4, num_low_frequencies(full[1], cf))
    if kind == "lowres":
        vshape = view_shape_for(full, (frac, frac))
        if tuple(file_shape) not in (full, vshape):
            raise DataError(f"{path}: k-space matrix {tuple(file_shape)} is neither the full matrix {full} nor the "
                            f"view {vshape} of view {cfg.view!r}; pass full_matrix (--full-matrix HxW)")
    else:
        if tuple(file_shape) != full:
            raise DataError(f"{path}: view 'acs' needs full-resolution files {full}, got {tuple(file_shape)}")
        vshape = (full[0], acs_w)
    return {"spec": cfg.view, "kind": kind, "full_shape": list(full), "view_shape": list(vshape),
            "fraction": [vshape[0] / full[0], vshape[1] / full[1]], "scale_acs_width": acs_w}


def _record(out_dir: Path, state: dict, res: dict) -> None:
    """Record a finished task (its shard, if it wrote one) in the partial manifest: the resume point."""
    if res["entry"] is not None:
        state["shards"].append({**res["entry"], "task": res["task"]})
        if res["target_entry"] is not None:
            state["target_shards"].append(res["target_entry"])
    state["skipped"].extend(res["skipped"])
    state["tasks_done"] = res["task"] + 1
    atomic_write_text(out_dir / PARTIAL_MANIFEST, json.dumps(state, indent=1), overwrite=True)


def prepare(inputs: list[Path], out_dir: Path, cfg: PrepConfig = PrepConfig(), overwrite: bool = False,
            progress: bool = True, *, device: str | torch.device | None = None, strict: bool = True,
            workers: int = 1, skip_refused: bool = False) -> dict:
    """Prepare ``inputs`` (files or folders of fastMRI ``.h5``) into ``out_dir``; returns the manifest.

    ``workers``: processes preparing slices in parallel (the result does not depend on it); ``skip_refused``:
    prepare the files that can be brought to the training matrix and list the others in ``refused`` instead of
    refusing the run. Raises ``DataError`` for bad inputs (refused files, mixed coil counts without
    ``virtual_coils``, NaN/Inf slices, too few ACS lines), ``FileExistsError`` if ``out_dir`` holds a finished set
    (unless ``overwrite``), ``ValueError`` if it holds an interrupted run with another configuration (unless
    ``overwrite``). ``strict``: folder mode refuses unreadable files instead of skipping them with a warning.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    device = torch.device(device or "cpu")
    vols, plans, sources, matrix, refused = _open_sources(inputs, cfg, strict, skip_refused)
    config = asdict(cfg)
    config_hash = shards.config_hash(config, sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = shards.resume_state(out_dir, config_hash, overwrite)
    if state is None:
        state = {"format_version": FORMAT_VERSION, "config_hash": config_hash,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tasks_done": 0, "shards": [],
                 "target_shards": [], "skipped": []}
    geo = view_geometry(cfg, vols[0].shape, vols[0].path)
    with_targets = cfg.keep_targets and (geo is not None or all(v.mask is None for v in vols))
    if cfg.keep_targets and not with_targets and any(v.mask is None for v in vols):
        warnings.warn("no targets kept: some inputs have their own mask (undersampled data without a clean "
                      "target); a prepared set has targets for all slices or none")
    if geo is not None:
        H, W = geo["view_shape"]
        C = vols[0].num_coils
        densities = [np.ones((1, 1, W), np.float32)] * len(vols)
    else:
        (H, W), sampler = matrix, cfg.sampler()
        C = cfg.virtual_coils or vols[0].num_coils
        base = sampler.density((H, W)).numpy().astype(np.float32)
        densities = [base if plan.support() is None else (base * plan.support()).astype(np.float32)
                     for plan in plans]
    job = prep_slice.Job(cfg, vols, plans, densities, geo, with_targets, out_dir, str(device))

    tasks = shards.shard_tasks([s["used_slices"] for s in sources], cfg.shard_size)
    first = state["tasks_done"]
    done = sum(t[3] - t[2] for t in tasks[:first])
    files_done = sum(1 for t in tasks[:first] if t[3] == sources[t[1]]["used_slices"])
    fbar = tqdm(total=len(sources), initial=files_done, desc="prep files", unit="file", disable=not progress,
                position=0)
    bar = tqdm(total=sum(s["used_slices"] for s in sources), initial=done, desc="prep slices", unit="slice",
               disable=not progress, position=1)
    t0, n_new, cpu0, task_cpu = time.monotonic(), 0, time.process_time(), []
    start_method = "spawn" if device.type == "cuda" else None
    try:
        results = ordered_map(prep_slice.run_task, tasks[first:], workers, prep_slice.set_job,
                              (job, 1 if workers > 1 else None), start_method=start_method)
        for res in results:  # in task order: the partial manifest always describes a prefix of the tasks
            _record(out_dir, state, res)
            for sk in res["skipped"]:
                warnings.warn(f"{vols[res['fi']].path}: slice {sk['id'].rsplit(':', 1)[1]} is all zero; skipped")
            n_new += res["rows"]
            task_cpu.append(res["cpu_s"])
            task = tasks[res["task"]]
            bar.update(task[3] - task[2])
            if res["stop"] == sources[res["fi"]]["used_slices"]:
                fbar.update(1)
    finally:
        bar.close()
        fbar.close()
    elapsed, parent_cpu = time.monotonic() - t0, time.process_time() - cpu0
    if workers == 1:
        parent_cpu -= sum(task_cpu)  # the tasks ran in this process

    num_slices = sum(s["num_slices"] for s in state["shards"])
    skipped = state["skipped"]
    if num_slices == 0:
        raise DataError(f"no usable slices in {inputs} ({len(skipped)} all-zero slices skipped)")
    manifest = {
        "format_version": FORMAT_VERSION, "mri_diffusion_version": __version__, "created": state["created"],
        "sources": sources, "config": config, "config_hash": config_hash, "image_shape": [H, W],
        "num_coils": C, "num_slices": num_slices, "mask_shape": list(densities[0].shape),
        "shards": [{k: v for k, v in e.items() if k != "task"} for e in state["shards"]], "has_targets": with_targets,
        "target_shards": state["target_shards"] if with_targets else [],
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in skipped],
        "refused": [{k: r[k] for k in ("file", "slices", "reason")} for r in refused],
        "noise_rule": NOISE_RULE, "scale_rule": SCALE_RULE, "view": geo,
        "geometry": None if geo is not None else {"matrix": [H, W], "matrix_source": "config" if cfg.matrix
                                                  else "headers", "virtual_coils": cfg.virtual_coils,
                                                  "max_pe_scale": geometry.MAX_PE_SCALE, "rules": geometry.RULES},
        "units": "k-space divided by the per-slice scale; multiply images by 'scale' for the file's units",
        "disk": _disk(state, with_targets, sources, (H, W), num_slices),
        "run": {"workers": int(workers), "slices_this_run": n_new, "elapsed_s": round(elapsed, 3),
                "slices_per_s": round(n_new / elapsed, 4) if elapsed > 0 and n_new else None,
                "slices_per_s_per_worker": round(n_new / elapsed / workers, 4) if elapsed > 0 and n_new else None,
                "cpu_s_tasks": round(sum(task_cpu), 3), "cpu_s_parent": round(parent_cpu, 3),
                "idle_estimate_s": {str(n): round(_makespan(task_cpu, n) + max(parent_cpu, 0.0), 3)
                                    for n in (1, 2, 4, 8)}},
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1), overwrite=overwrite)
    (out_dir / PARTIAL_MANIFEST).unlink(missing_ok=True)
    return manifest


def _makespan(costs: list[float], n: int) -> float:
    """Wall seconds of tasks with these CPU costs on n idle cores, each task to the first free worker in task
    order (the pool's queue): what the measured CPU time predicts for ``--workers n`` on an otherwise idle
    machine (a shared machine stretches the measured wall time)."""
    free = [0.0] * n
    for c in costs:
        i = free.index(min(free))
        free[i] += c
    return max(free)


def _disk(state: dict, with_targets: bool, sources: list[dict], matrix: tuple[int, int], num_slices: int) -> dict:
    """Bytes of the set per slice and against the raw k-space it came from at the training matrix (complex64,
    the files' own coil counts, the slices used)."""
    total = sum(s["bytes"] for s in state["shards"]) + (sum(s["bytes"] for s in state["target_shards"])
                                                         if with_targets else 0)
    raw = sum(8 * s["num_coils"] * matrix[0] * matrix[1] * s["used_slices"] for s in sources)
    raw_slices = sum(s["used_slices"] for s in sources)
    per = total / num_slices
    raw_per = raw / raw_slices
    return {"bytes": total, "bytes_per_slice": round(per, 1), "targets_included": with_targets,
            "raw_bytes_per_slice_at_matrix": round(raw_per, 1), "prepared_over_raw": round(per / raw_per, 4)}
