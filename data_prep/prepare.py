"""fastMRI ``.h5`` files -> a prepared training set: masked, normalised k-space + mask + density + coil maps
+ noise level per slice, in shards, with a manifest (format: ``mri_diffusion.data``).

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

Resume: ``manifest.partial.json`` records the finished shards after each one; a re-run with the same
configuration continues after the last finished shard (``data_prep.shards``).
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
from mri_diffusion.measurement import (NOISE_RULE, SCALE_RULE, Measurement, MeasurementModel, choose_mask,
                                       noise_source)
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import ifft2c
from mri_diffusion.physics.masks import acs_block, default_center_fraction, make_sampler, num_low_frequencies, seed_from
from mri_diffusion.physics.views import LowResView, centre_slices, parse_view, view_shape_for

from . import shards
from .fastmri_h5 import DataError, Volume, iter_kspace, list_h5, open_volume


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

    def __post_init__(self):
        make_sampler(self.mask_type, self.acceleration, self.center_fraction)  # validates kind / acceleration
        if self.view is not None:
            parse_view(self.view)  # validates
        if self.full_matrix is not None:
            fm = tuple(int(v) for v in self.full_matrix)
            if len(fm) != 2 or min(fm) < 1:
                raise ValueError(f"full_matrix must be two positive sizes (H, W), got {self.full_matrix}")
            object.__setattr__(self, "full_matrix", fm)
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
                                use_file_noise_std=self.use_file_noise_std)


def prepare_config_from_args(**kwargs) -> PrepConfig:
    """PrepConfig from CLI-style keyword arguments; ``None`` means "default", unknown names are errors."""
    names = {f.name: f for f in fields(PrepConfig)}
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"unknown prep option(s) {unknown}; known: {sorted(names)}")
    casts = {"acceleration": float, "seed": int, "shard_size": int, "max_slices_per_file": int,
             "noise_std": float, "center_fraction": float, "calib_rows": int}
    clean = {k: (casts[k](v) if k in casts else v) for k, v in kwargs.items() if v is not None}
    return PrepConfig(**clean)


def _open_sources(inputs, cfg: PrepConfig, strict: bool) -> tuple[list[Volume], list[dict]]:
    files = list_h5(list(inputs) if isinstance(inputs, (list, tuple)) else [inputs], strict=strict)
    if not files:
        raise DataError(f"no readable .h5 files in {inputs}")
    vols, sources, seen = [], [], {}
    for p in files:
        vol = open_volume(p)
        if vol.name in seen:
            raise DataError(f"{p}: same file name as {seen[vol.name]}; slice ids 'file.h5:slice' must be unique")
        seen[vol.name] = p
        shape = (vol.num_coils, *vol.shape)
        if vols and shape != sources[0]["shape"]:
            raise DataError(f"{p}: k-space shape (coils, H, W) {shape} differs from {sources[0]['shape']} of "
                            f"{vols[0].path}; all slices of a prepared set must share (coils, H, W)")
        own_mask = cfg.use_file_mask and vol.mask is not None
        if vol.mask is not None and cfg.mask_type == "poisson":
            raise DataError(f"{p}: has its own 1-D mask, but mask_type 'poisson' (2-D) cannot describe its "
                            f"density; use mask_type random or equispaced")
        if own_mask and vol.attrs.get("acceleration") not in (None, 0) and \
                abs(float(vol.attrs["acceleration"]) - cfg.acceleration) > 1e-6:
            warnings.warn(f"{p}: file acceleration {vol.attrs['acceleration']} != configured {cfg.acceleration}; "
                          f"its density uses the configured sampler")
        noise = noise_source(cfg.noise_std, cfg.use_file_noise_std, vol.attrs)
        used = vol.num_slices if cfg.max_slices_per_file is None else min(vol.num_slices, cfg.max_slices_per_file)
        vols.append(vol)
        sources.append({"file": vol.name, "num_slices": vol.num_slices, "used_slices": used,
                        "multicoil": vol.multicoil, "num_coils": vol.num_coils, "shape": shape,
                        "mask_source": "file" if own_mask else "retrospective" if vol.mask is None else
                        "retrospective x file", "noise_source": noise})
    for s in sources:
        s["shape"] = list(s["shape"])
    return vols, sources


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


def _slice_mask(vol: Volume, index: int, cfg: PrepConfig, sampler) -> torch.Tensor:
    """The training mask of one slice: the file's own, else the sampler's seeded by (file, slice, seed)."""
    return choose_mask(vol.shape, sampler, seed_from(vol.name, index, cfg.seed), vol.mask, cfg.use_file_mask,
                       name=f"{vol.path}: 'mask'")[0]


def _prepare_view_slice(vol: Volume, index: int, k_np: np.ndarray, cfg: PrepConfig, sampler, geo: dict,
                        with_target: bool, device) -> dict:
    """One slice of a view set: the fully sampled view k-space (C, h, w), normalised like the full scan."""
    full, vshape = tuple(geo["full_shape"]), tuple(geo["view_shape"])
    H, W = vol.shape
    k = torch.from_numpy(k_np).to(device)
    view = LowResView(full, vshape)
    if geo["kind"] == "acs":
        mask = _slice_mask(vol, index, cfg, sampler)
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
        density=np.ones((1, 1, vshape[1]), np.float32), scale_width=min(geo["scale_acs_width"], vshape[1]),
        amplitude=view.amplitude_scale)
    return _row(vol, index, m, m.kspace if with_target else None)


def _prepare_slice(vol: Volume, index: int, k_np: np.ndarray, cfg: PrepConfig, sampler, density: np.ndarray,
                   with_target: bool, device) -> dict:
    k_full = torch.from_numpy(k_np).to(device)
    mask = _slice_mask(vol, index, cfg, sampler).to(device)
    m = cfg.measurement_model().condition(
        k_full, mask, attrs=vol.attrs, where=f"{vol.path}: slice {index}", density=density,
        mask_name=f"the {cfg.mask_type} R={cfg.acceleration:g} mask" if vol.mask is None else "the file's mask")
    return _row(vol, index, m, k_full / m.scale if with_target else None)


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


def prepare(inputs: list[Path], out_dir: Path, cfg: PrepConfig = PrepConfig(), overwrite: bool = False,
            progress: bool = True, *, device: str | torch.device | None = None, strict: bool = True) -> dict:
    """Prepare ``inputs`` (files or folders of fastMRI ``.h5``) into ``out_dir``; returns the manifest.

    Raises ``DataError`` for bad inputs (mixed shapes, NaN/Inf slices, too few ACS lines),
    ``FileExistsError`` if ``out_dir`` holds a finished set (unless ``overwrite``), ``ValueError`` if it
    holds an interrupted run with another configuration (unless ``overwrite``). ``strict``: folder mode
    refuses unreadable files instead of skipping them with a warning.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    device = torch.device(device or "cpu")
    vols, sources = _open_sources(inputs, cfg, strict)
    config = asdict(cfg)
    config_hash = shards.config_hash(config, sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = shards.resume_state(out_dir, config_hash, overwrite)
    fresh = state is None
    if fresh:
        state = {"format_version": FORMAT_VERSION, "config_hash": config_hash,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shards": [], "target_shards": [],
                 "cursors": [], "skipped": []}
    C, H, W = sources[0]["shape"]
    geo = view_geometry(cfg, (H, W), vols[0].path)
    with_targets = cfg.keep_targets and (geo is not None or all(v.mask is None for v in vols))
    if cfg.keep_targets and not with_targets and any(v.mask is None for v in vols):
        warnings.warn("no targets kept: some inputs have their own mask (undersampled data without a clean "
                      "target); a prepared set has targets for all slices or none")
    sampler = cfg.sampler()
    density = sampler.density((H, W)).numpy().astype(np.float32)
    if geo is not None:
        H, W = geo["view_shape"]
        density = np.ones((1, 1, W), np.float32)

    cursor = tuple(state["cursors"][-1]) if state["cursors"] else (-1, -1)
    total = sum(s["used_slices"] for s in sources)
    done = sum(1 for fi, s in enumerate(sources) for i in range(s["used_slices"]) if (fi, i) <= cursor)
    rows: list[dict] = []
    pending_skips: list[dict] = []

    def flush(pos):
        entry, tentry = shards.write_shard(out_dir, len(state["shards"]), rows, with_targets)
        state["shards"].append(entry)
        if tentry is not None:
            state["target_shards"].append(tentry)
        state["cursors"].append(list(pos))
        state["skipped"].extend(pending_skips)
        pending_skips.clear()
        rows.clear()
        atomic_write_text(out_dir / PARTIAL_MANIFEST, json.dumps(state, indent=1), overwrite=True)

    bar = tqdm(total=total, initial=done, desc="prep", unit="slice", disable=not progress)
    try:
        for fi, (vol, src) in enumerate(zip(vols, sources)):
            if fi < cursor[0]:
                continue
            start = cursor[1] + 1 if fi == cursor[0] else 0
            if start >= src["used_slices"]:
                continue
            for i, k_np in iter_kspace(vol, src["used_slices"]):
                if i < start:
                    continue
                if not np.any(k_np):
                    warnings.warn(f"{vol.path}: slice {i} is all zero; skipped")
                    pending_skips.append({"id": f"{vol.name}:{i}", "reason": "all-zero", "pos": [fi, i]})
                else:
                    if geo is None:
                        rows.append(_prepare_slice(vol, i, k_np, cfg, sampler, density, with_targets, device))
                    else:
                        rows.append(_prepare_view_slice(vol, i, k_np, cfg, sampler, geo, with_targets, device))
                bar.update(1)
                if len(rows) == cfg.shard_size:
                    flush((fi, i))
        if rows:
            flush((len(sources) - 1, sources[-1]["used_slices"] - 1))
    finally:
        bar.close()

    num_slices = sum(s["num_slices"] for s in state["shards"])
    skipped = state["skipped"] + pending_skips
    if num_slices == 0:
        raise DataError(f"no usable slices in {inputs} ({len(skipped)} all-zero slices skipped)")
    manifest = {
        "format_version": FORMAT_VERSION, "mri_diffusion_version": __version__, "created": state["created"],
        "sources": sources, "config": config, "config_hash": config_hash, "image_shape": [H, W],
        "num_coils": C, "num_slices": num_slices, "mask_shape": list(density.shape),
        "shards": state["shards"], "has_targets": with_targets,
        "target_shards": state["target_shards"] if with_targets else [],
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in skipped],
        "noise_rule": NOISE_RULE, "scale_rule": SCALE_RULE, "view": geo,
        "units": "k-space divided by the per-slice scale; multiply images by 'scale' for the file's units",
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1), overwrite=overwrite)
    (out_dir / PARTIAL_MANIFEST).unlink(missing_ok=True)
    return manifest
