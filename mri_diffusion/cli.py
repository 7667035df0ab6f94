"""``mridiff``: the one command-line entry point (the composition root).

Each command imports what it needs inside its body so that ``mridiff --help`` stays fast.
Errors in the input become a one-line message naming the file/key/shape and exit status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_util import (ACCELERATION, FRACTION, POSITIVE_INT, Number, check_acceleration, device as _device,
                       friendly_errors, key_values as _key_values, matrix as _matrix, message_only_warnings,
                       refuse_unused, setup_torch, split_pairs)

COLIN27 = "/usr/share/mricron/templates/ch2better.nii.gz"


def _virtual_coils(text: str, method: str) -> int:
    """--virtual-coils: 'auto' (8 for diffusion, else off) or a number >= 0."""
    from recon.diffusion import DEFAULT_VIRTUAL_COILS

    n = (DEFAULT_VIRTUAL_COILS if method in ("diffusion", "auto") else 0) if text == "auto" else int(text) if text.isdigit() else -1
    if n < 0:
        raise click.BadParameter(f"{text!r}: expected 'auto' or a number of coils >= 0", param_hint="--virtual-coils")
    return n


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mri-diffusion")
@click.pass_context
def main(ctx):
    """mri-diffusion: MRI reconstruction with diffusion priors learned without clean images.

    Typical flow: simulate (or bring fastMRI .h5 files) -> recon -> evaluate. `mridiff demo` runs it all.
    """
    message_only_warnings(ctx)


@main.command()
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path), default=COLIN27, show_default=True,
              help="Real magnitude MR volume (NIfTI; default Colin27 T1 from Debian's mricron-data), or an .h5 of "
                   "complex images: 'image' (N, H, W) complex + 'volume' (N,) integer ids (e.g. SIAT T2 brain).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; gets multicoil_train/, multicoil_val/, multicoil_test/.")
@click.option("--matrix", default=None,
              help="NIfTI: image matrix N (or NxN), default 128. h5: HxW centre of k-space to keep (a "
                   "lower-resolution acquisition of the same field of view), default the whole (cropped) matrix.")
@click.option("--coils", type=POSITIVE_INT, default=8, show_default=True, help="Number of receive coils (birdcage maps).")
@click.option("--snr-db", type=Number(), default=40.0, show_default=True,
              help="20 log10(mean foreground of the noise-free RSS image / CN noise std per k-space entry).")
@click.option("--slice-step", type=POSITIVE_INT, default=3, show_default=True, help="NIfTI: use every n-th axial slice.")
@click.option("--chunk", type=POSITIVE_INT, default=5, show_default=True, help="NIfTI: slices per output file (volume).")
@click.option("--gap", type=click.IntRange(min=0), default=2, show_default=True, help="NIfTI: slices dropped at each train/val/test boundary.")
@click.option("--lowres", type=Number(low=0, high=1), default=0.5, show_default=True,
              help="NIfTI: also write low-resolution scans (this fraction of the matrix) of the training slices; 0: off.")
@click.option("--image-crop", default=None, help="h5: HxW image-domain centre crop of the source first (SIAT: 256x256).")
@click.option("--split-train", default="0-13", show_default=True, help="h5: volume ids for multicoil_train/.")
@click.option("--split-val", default="14-15", show_default=True, help="h5: volume ids for multicoil_val/.")
@click.option("--split-test", default="16-19", show_default=True, help="h5: volume ids for multicoil_test/.")
@click.option("--fov-mm", type=Number(low=0, low_open=True), default=220.0, show_default=True, help="h5: nominal field of view along H (header only).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@click.pass_context
@friendly_errors
def simulate(ctx, source, out_dir, matrix, coils, snr_db, slice_step, chunk, gap, lowres, image_crop, split_train,
             split_val, split_test, fov_mm, seed, overwrite):
    """Simulate fastMRI-format multi-coil k-space from real images: a magnitude volume (NIfTI) or complex
    image volumes (h5, their own phase kept; one file per volume, split by volume)."""
    from click.core import ParameterSource

    is_h5 = source.suffix.lower() in (".h5", ".hdf5")
    only = ("image_crop", "split_train", "split_val", "split_test", "fov_mm") if not is_h5 else \
        ("slice_step", "chunk", "gap", "lowres")
    given = [n for n in only if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} does not apply to "
                               f"{'h5' if is_h5 else 'NIfTI'} sources ({source})")
    square = lambda v: v if v is None or "x" in v.lower() else f"{v}x{v}"  # noqa: E731  ("128" = 128x128)
    if is_h5:
        from data_prep.simulate_h5 import ComplexSimConfig, parse_ids, simulate_h5

        shape = {o: _matrix(square(v), hint=f"--{o}")
                 for o, v in (("matrix", matrix), ("image-crop", image_crop))}
        cfg = ComplexSimConfig(coils=coils, snr_db=snr_db, image_crop=shape["image-crop"], matrix=shape["matrix"],
                               fov_mm=fov_mm, seed=seed)
        splits = {"train": parse_ids(split_train), "val": parse_ids(split_val), "test": parse_ids(split_test)}
        s = simulate_h5(source, out_dir, cfg, splits, overwrite=overwrite)
        n = {k: f"{len(v)} files/{s['slices'][k]} slices" for k, v in s["files"].items()}
        sig = list(s["noise_std"].values())
        click.echo(f"wrote {out_dir} ({s['matrix'][0]}x{s['matrix'][1]}, {coils} coils): train {n['train']}, "
                   f"val {n['val']}, test {n['test']}; noise std {min(sig):.3g}..{max(sig):.3g}; "
                   f"volumes in no split: {s['unused_volumes'] or 'none'}; split in {out_dir / 'split.json'}")
        return
    from data_prep.simulate import SimConfig, simulate as run_sim

    if not source.exists():
        raise click.ClickException(
            f"{source}: not found. The default is the Colin27 brain from Debian's 'mricron-data' package "
            "(sudo apt-get install mricron-data); or pass --source with any T1 NIfTI volume.")
    h, w = _matrix(square(matrix or "128"), hint="--matrix")
    if h != w:
        raise click.BadParameter(f"{matrix!r}: NIfTI sources give square matrices", param_hint="--matrix")
    cfg = SimConfig(matrix=h, coils=coils, snr_db=snr_db, slice_step=slice_step, chunk=chunk, gap=gap, seed=seed,
                    lowres=lowres)
    summary = run_sim(source, out_dir, cfg, overwrite=overwrite)
    n = {k: sum(len(b) for b in v) for k, v in summary["slices"].items()}
    click.echo(f"wrote {out_dir}: slices train={n['train']} val={n['val']} test={n['test']}, "
               f"noise std {summary['noise_std']:.3g}")


DIFFUSION_ONLY = ("checkpoint", "sampler", "steps", "sigma_max", "sigma_min", "rho", "samples", "sampler_options",
                  "save_samples", "batch_slices")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (fastMRI submission layout: same file names, key 'reconstruction'). Finished "
                   "files made with the same settings are skipped, so a re-run resumes an interrupted run.")
@click.option("--method", type=click.Choice(["zero-filled", "sense", "l1-wavelet", "diffusion", "auto"]),
              default="sense", show_default=True,
              help="auto: the guarded reconstruction (recon/guard.py): per slice, held-out k-space lines choose "
                   "between the diffusion posterior and L1-wavelet / CG-SENSE, and flag scans unlike the prior's "
                   "training set (printed as warnings, recorded per slice in the output's slice_info attr).")
@click.option("--checkpoint", default=None,
              help="Prior for --method diffusion / auto: a checkpoint from mridiff train, or 'builtin'.")
@click.option("--sampler", type=click.Choice(["dds", "dps", "pc", "langevin", "cg"]), default="dds", show_default=True,
              help="Posterior sampler; cg is the old name of dds (its data-consistency step is a CG solve).")
@click.option("--steps", type=POSITIVE_INT, default=None, help="Noise levels of the sampler (default: the sampler's own).")
@click.option("--sigma-max", type=Number(low=0, low_open=True), default=None,
              help="Highest noise level of the schedule (default: the sampler's own; dds 5). The 10-call dds recipe "
                   "is --steps 10 --sigma-max 1 --sigma-min 0.03 --sampler-option eta=1.0 (BENCHMARKS.md, Few-step "
                   "sampling).")
@click.option("--sigma-min", type=Number(low=0, low_open=True), default=None, help="Lowest positive noise level (default: the sampler's own).")
@click.option("--rho", type=Number(low=0, low_open=True), default=None, help="Curvature of the Karras schedule (dds, dps; default 7).")
@click.option("--samples", type=POSITIVE_INT, default=4, show_default=True,
              help="Posterior samples per slice (mean + std; 1: no std).")
@click.option("--sampler-option", "sampler_options", multiple=True,
              help="key=value passed to the sampler, e.g. eta=1.0 (a wrong key lists the valid ones).")
@click.option("--save-samples", is_flag=True, help="Also write the sample magnitudes (reconstruction_samples).")
@click.option("--mask", "mask_kind", type=click.Choice(["random", "equispaced", "poisson"]), default="random",
              show_default=True, help="Retrospective mask for files without their own 'mask'.")
@click.option("--acceleration", "-R", type=ACCELERATION, default=4.0, show_default=True,
              help="Requested acceleration; the files record it and the effective one (1 / sampled fraction).")
@click.option("--center-fraction", type=FRACTION, default=None, help="Default: 0.08 at R<8, 0.04 at R>=8 (fastMRI).")
@click.option("--seed", default=0, show_default=True, help="Mask seed (combined with each file name).")
@click.option("--sense-iters", type=POSITIVE_INT, default=30, show_default=True)
@click.option("--sense-lambda", type=Number(low=0), default=1e-2, show_default=True,
              help="Tikhonov weight of CG-SENSE (normalised data).")
@click.option("--l1-lambda", type=Number(low=0), default=1e-3, show_default=True,
              help="L1-wavelet weight on ACS-normalised data.")
@click.option("--l1-iters", type=POSITIVE_INT, default=100, show_default=True)
@click.option("--max-slices", type=POSITIVE_INT, default=None, help="Reconstruct at most this many slices per file.")
@click.option("--noise-std", type=Number(low=0, low_open=True), default=None,
              help="k-space noise std (CN, file units) of every input; default: each file's noise_std attr, else "
                   "estimated per slice (an estimate that fails is an error naming the file and slice).")
@click.option("--challenge", type=click.Choice(["auto", "multicoil", "singlecoil"]), default="auto",
              show_default=True, help="Refuse files of the other kind.")
@click.option("--virtual-coils", default="auto", show_default=True,
              help="SVD-compress scans with more coils to this many virtual coils (0: off). auto: 8 for "
                   "--method diffusion (CG data consistency then costs 8 coils' FFTs; -0.1 dB on 15 coils, "
                   "BENCHMARKS.md), off for the classical methods.")
@click.option("--batch-slices", type=POSITIVE_INT, default=1, show_default=True,
              help="Slices sampled together (batch = slices x samples) for --method diffusion; same results, "
                   "faster on a GPU.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Redo outputs that exist (by default finished files made with the "
              "same settings are skipped, and files made with other settings are refused).")
@click.option("--keep-going", is_flag=True, help="Reconstruct what can be and exit 0 even when some inputs fail "
              "(they are still listed). Without it, an unreadable input stops the run before any work, and one "
              "that fails during reconstruction makes it exit 1 after the others.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--guard-fraction", type=Number(low=0, low_open=True, high=0.45), default=0.15,
              show_default=True, help="--method auto: share of the sampled lines outside the calibration block held "
              "out per fold.")
@click.option("--guard-folds", type=POSITIVE_INT, default=2, show_default=True,
              help="--method auto: disjoint held-out sets (each costs one more posterior run; a mask too sparse "
              "for them gets as many as it allows).")
@click.option("--guard-l1-grid", default="3e-4,1e-3,3e-3", show_default=True,
              help="--method auto: L1-wavelet weights tried per slice (chosen by held-out error).")
@click.option("--guard-mode", type=click.Choice(["blend", "choose"]), default="blend", show_default=True,
              help="--method auto: blend = alpha x posterior + (1 - alpha) x best classical, alpha fitted on the "
              "held-out lines; choose = the candidate with the smallest held-out error.")
@click.option("--guard-flag-db", type=Number(), default=0.0, show_default=True,
              help="--method auto, prior without an OOD reference: flag a slice when the diffusion's held-out error "
              "exceeds the best classical one by more than this (dB).")
@click.option("--guard-flag-ratio", type=Number(low=0, low_open=True), default=4.0, show_default=True,
              help="--method auto, prior without an OOD reference: flag a slice when the diffusion's held-out error "
              "exceeds this multiple of what its posterior spread predicts.")
@click.option("--guard-flag-score", type=Number(low=0, low_open=True), default=2.0, show_default=True,
              help="--method auto: flag a slice when the denoiser changes its CG-SENSE image this many times more "
              "than the prior's own validation slices (recon/ood.py; needs the prior's OOD reference).")
@click.option("--guard-flagged", type=click.Choice(["classical", "guard"]), default="classical", show_default=True,
              help="--method auto: slices flagged by the denoiser score: classical = the prior is not used (the "
              "classical candidate with the smallest cross-validated error); guard = decided like the others.")
@click.option("--guard-cv-folds", type=click.IntRange(min=0), default=5, show_default=True,
              help="--method auto, --guard-flagged classical: cross-validation folds that choose the classical "
              "reconstruction of a flagged slice, every sampled line outside the calibration block held out once "
              "(classical candidates only); 0 = the --guard-folds held-out lines.")
@click.option("--guard-cv-mix/--no-guard-cv-mix", default=False, show_default=True,
              help="--method auto, --guard-flagged classical: a flagged slice gets w x best + (1 - w) x the best of "
              "the other classical family (L1-wavelet / CG-SENSE), w fitted on the cross-validation folds, instead "
              "of the single best candidate.")
@click.option("--guard-cv-rule", type=click.Choice(["min", "1se"]), default="min", show_default=True,
              help="--method auto, --guard-flagged classical: how the cross-validation picks a flagged slice's "
              "classical reconstruction: min = the smallest cross-validated error; 1se = CG-SENSE unless an "
              "L1-wavelet weight beats it by more than one standard error of the per-line differences.")
@click.option("--guard-cv-partner/--no-guard-cv-partner", default=True, show_default=True,
              help="--method auto, blend mode: on slices that are not flagged, choose the classical partner of the "
              "blend by the --guard-cv-folds cross-validation (classical candidates rerun once per fold on every "
              "slice); --no-guard-cv-partner or --guard-cv-folds 0: by the --guard-folds held-out lines.")
@click.option("--ood-reference", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--method auto: the prior's OOD reference (mridiff ood-reference). Default: "
              "<checkpoint>.ood.json when it exists (the shipped priors have one); without one the flag falls back "
              "to the held-out-line rules (--guard-flag-db, --guard-flag-ratio).")
@click.pass_context
@friendly_errors
def recon(ctx, inputs, out_dir, method, checkpoint, sampler, steps, sigma_max, sigma_min, rho, samples, sampler_options,
          save_samples,
          mask_kind, acceleration, center_fraction, seed, sense_iters, sense_lambda, l1_lambda, l1_iters, max_slices,
          noise_std, challenge, virtual_coils, batch_slices, device, overwrite, keep_going, quiet, guard_fraction,
          guard_folds, guard_l1_grid, guard_mode, guard_flag_db, guard_flag_ratio, guard_flag_score, guard_flagged,
          guard_cv_folds, guard_cv_mix, guard_cv_rule, guard_cv_partner, ood_reference):
    """Reconstruct fastMRI .h5 files or folders (classical methods or posterior sampling with a prior)."""
    from recon.pipeline import MaskSpec, RunFailed, classical_method, run

    guard_keys = ("guard_fraction", "guard_folds", "guard_l1_grid", "guard_mode", "guard_flag_db", "guard_flag_ratio",
                  "guard_flag_score", "guard_flagged", "guard_cv_folds", "guard_cv_mix", "guard_cv_rule",
                  "guard_cv_partner",
                  "ood_reference")
    refuse_unused(ctx, method, {**{k: ("diffusion", "auto") for k in DIFFUSION_ONLY}, "sense_iters": ("sense", "auto"),
                                "sense_lambda": ("sense", "auto"), "l1_lambda": ("l1-wavelet",),
                                "l1_iters": ("l1-wavelet", "auto"), **{k: ("auto",) for k in guard_keys}})
    check_acceleration(acceleration, mask_kind, center_fraction)
    setup_torch()
    n_virtual = _virtual_coils(virtual_coils, method)
    spec = MaskSpec(mask_kind, acceleration, center_fraction, seed)
    dev = _device(device)
    attrs = {}
    if method in ("diffusion", "auto"):
        from recon.diffusion import DiffusionRecon, load_prior, parse_sampler_options
        from recon.samplers import default_sigmas

        if checkpoint is None:
            raise click.UsageError(f"--method {method} needs --checkpoint")
        if method == "auto":
            from recon.guard import GuardedRecon, GuardOptions

            if guard_cv_folds == 1:
                raise click.BadParameter("1: must be 0 (off) or >= 2", param_hint="--guard-cv-folds")
            try:
                grid = tuple(float(v) for v in guard_l1_grid.split(","))
                gopts = GuardOptions(fraction=guard_fraction, folds=guard_folds, l1_grid=grid, l1_iters=l1_iters,
                                     sense_iters=sense_iters, sense_lambda=sense_lambda, flag_db=guard_flag_db,
                                     flag_ratio=guard_flag_ratio, flag_score=guard_flag_score, flagged=guard_flagged,
                                     fallback_folds=guard_cv_folds, fallback_mix=guard_cv_mix, mode=guard_mode,
                                     fallback_rule=guard_cv_rule, partner_cv=guard_cv_partner, seed=seed)
            except ValueError as e:
                raise click.BadParameter(f"{guard_l1_grid!r}: {e}", param_hint="--guard-l1-grid") from None
        try:  # checked before the prior is loaded
            opts = parse_sampler_options(sampler, split_pairs(sampler_options, "--sampler-option"))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--sampler-option") from None
        try:  # the schedule too, before the prior is loaded
            default_sigmas(sampler, steps, sigma_min, sigma_max, rho)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        net, cfg, ck = load_prior(checkpoint, dev)
        fn = DiffusionRecon(net, sampler, steps, samples, seed, save_samples, opts, sigma_max, sigma_min, rho)
        settings, attrs, what = fn.describe(checkpoint, cfg, ck)
        if method == "auto":
            from recon.ood import OODReference, find_reference

            try:
                ref = OODReference.load(ood_reference) if ood_reference else find_reference(checkpoint)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="--ood-reference") from None
            fn = GuardedRecon(fn, gopts, ref)
            settings = {**settings, **fn.describe()}
            attrs = {**attrs, "guard": json.dumps(fn.describe()["guard"])}
            what += (f"; guarded ({gopts.mode}): {gopts.folds} fold(s) of {gopts.fraction:g} of the lines outside the "
                     f"centre held out, candidates {', '.join(fn.candidates)}; OOD flag: "
                     + (f"denoiser score > {gopts.flag_score:g} x its median on {ref.data} ({ref.slices} slices)"
                        if ref else f"held-out lines (no OOD reference for {checkpoint})"))
    else:
        params = {"sense": {"sense_iters": sense_iters, "sense_lambda": sense_lambda},
                  "l1-wavelet": {"l1_iters": l1_iters, "l1_lambda": l1_lambda}}.get(method, {})
        fn = classical_method(method, **params)
        settings = dict(params)
        what = ", ".join(f"{k} {v:g}" for k, v in params.items()) or "no parameters"
    label = f"{'diffusion' if method == 'diffusion' else 'auto'}-{attrs['prior']}" if method in ("diffusion", "auto") \
        else method
    try:
        res = run(list(inputs), out_dir, label, fn, spec, dev, overwrite=overwrite, attrs=attrs,
                  max_slices=max_slices, progress=not quiet, expect=None if challenge == "auto" else challenge,
                  needs_maps=method != "zero-filled", virtual_coils=n_virtual or None,
                  batch_slices=batch_slices, keep_going=keep_going, settings=settings, noise_std=noise_std)
    except RunFailed as e:
        click.echo(e.result.used_line(label, what, spec))
        raise click.ClickException(str(e)) from None
    click.echo(res.used_line(label, what, spec))
    if res.failed:
        click.echo(res.failure_text(len(res.failed) + len(res.written) + len(res.skipped)), err=True)
    done = f"; {len(res.skipped)} finished file(s) skipped (same settings)" if res.skipped else ""
    click.echo(f"wrote {len(res.written)} file(s) to {out_dir}{done}")


@main.command()
@click.option("--pred", "preds", multiple=True, required=True, type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="Folder of reconstructions (repeatable), or a folder of method folders.")
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of fastMRI files with reconstruction_rss / reconstruction_esc.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--protocol", type=click.Choice(["fastmri", "slice"]), default="fastmri", show_default=True,
              help="fastmri: per volume, data_range = volume max. slice: per slice, its own max.")
@click.option("--target-key", default=None, help="Default: reconstruction_esc if present (single-coil), else "
              "reconstruction_rss (the fastMRI convention).")
@click.option("--allow-nan", is_flag=True, help="Mark NaN reconstructions invalid instead of failing.")
@click.option("--allow-missing", is_flag=True, help="Score the pairs that exist when a method lacks predictions for "
              "some targets (or a prediction has no target); the missing ones are listed in the report and JSON. "
              "Without it, missing pairs are an error naming them.")
@click.option("--overwrite", is_flag=True)
@friendly_errors
def evaluate(preds, target, out_dir, protocol, target_key, allow_nan, allow_missing, overwrite):
    """NMSE / PSNR / SSIM (fastMRI protocol) -> metrics.csv, metrics.json, report.html; the summary table is
    printed too."""
    from recon.evaluate import EvaluationError, evaluate_dirs
    from recon.evaluation import summary_text

    names: dict[str, Path] = {}
    for p in preds:
        if p.name in names:
            raise click.BadParameter(f"two folders are both named {p.name!r} (the method label): {names[p.name]} and "
                                     f"{p}", param_hint="--pred")
        names[p.name] = p
    try:
        res = evaluate_dirs(preds[0] if len(preds) == 1 else names, target, out_dir, protocol=protocol,
                            target_key=target_key, overwrite=overwrite, allow_nan=allow_nan,
                            allow_missing=allow_missing)
    except EvaluationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary_text(res.summary))
    click.echo(f"wrote {out_dir / 'report.html'} (and metrics.csv, metrics_slices.csv, metrics.json)")


@main.command()
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path), default=COLIN27, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True)
@click.option("--accelerations", default="4,8", show_default=True)
@click.option("--max-slices", type=POSITIVE_INT, default=None, help="Per test file (for a quick look).")
@click.option("--fresh", is_flag=True, help="Start over instead of reusing finished stages.")
@click.option("--minutes", type=Number(low=0, low_open=True), default=8.0, show_default=True,
              help="Training budget of the demo's GSURE prior.")
@click.option("--samples", type=POSITIVE_INT, default=2, show_default=True, help="Posterior samples per slice.")
@click.option("--no-train", is_flag=True, help="Skip training (baselines and the built-in prior only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@friendly_errors
def demo(source, out_dir, accelerations, max_slices, fresh, minutes, samples, no_train, device):
    """Simulate -> prep -> train a GSURE prior (no clean images) -> reconstruct 4x/8x -> evaluate -> report."""
    from recon.demo import run_demo

    try:
        Rs = [ACCELERATION.convert(r, None, None) for r in accelerations.split(",")]
    except click.BadParameter as e:
        raise click.BadParameter(f"{e.message} (expected e.g. 4,8)", param_hint="--accelerations") from None
    for R in Rs:
        check_acceleration(R, "random", None, hint="--accelerations")
    setup_torch()
    res = run_demo(source, out_dir, Rs, max_slices=max_slices, fresh=fresh, device=_device(device), minutes=minutes,
                   samples=samples, train=not no_train, log=lambda msg: click.secho(f"==> {msg}", fg="cyan", err=True))
    click.echo("\n" + res["summary"])
    click.secho(f"report: {res['report'].resolve()}", fg="green")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--mask", "mask_kind", type=click.Choice(["random", "equispaced", "poisson"]), default="random",
              show_default=True, help="Retrospective training mask (a different seeded mask per slice).")
@click.option("--acceleration", "-R", type=ACCELERATION, default=4.0, show_default=True)
@click.option("--center-fraction", type=FRACTION, default=None, help="Default: 0.08 at R<8, 0.04 at R>=8.")
@click.option("--seed", default=0, show_default=True)
@click.option("--noise-std", type=Number(low=0), default=None, help="k-space noise std (CN, file units); default: the file's noise_std attr, else estimated.")
@click.option("--shard-size", type=POSITIVE_INT, default=64, show_default=True, help="Slices per shard file.")
@click.option("--max-slices", type=POSITIVE_INT, default=None, help="At most this many slices per file.")
@click.option("--no-targets", is_flag=True, help="Do not keep fully sampled targets even when the source has them.")
@click.option("--view", default=None, help="Build a view set: lowres:F (k-space centre, fraction F of the matrix) "
              "or acs (the fully sampled centre columns of each training mask).")
@click.option("--full-matrix", default=None, help="Views: the full-resolution matrix HxW when the files are "
              "low-resolution scans (default: the files' own matrix).")
@click.option("--matrix", default=None, help="Training matrix HxW every slice is brought to (readout oversampling "
              "removed and the readout cropped in the image domain, the phase encode cropped/zero-padded in "
              "k-space). Default from the headers: the smallest readout extent (reconSpace) x the largest width.")
@click.option("--virtual-coils", type=POSITIVE_INT, default=None, help="SVD-compress every slice to N virtual "
              "coils (needed when the files' coil counts differ; files with fewer coils are refused).")
@click.option("--workers", type=POSITIVE_INT, default=1, show_default=True, help="Processes preparing files in "
              "parallel (single-threaded each; the set is identical to one worker's).")
@click.option("--skip-refused", is_flag=True, help="Prepare the files that can be brought to the training matrix "
              "and list the others (without it, any refused file stops the run before any work, exit 1).")
@click.option("--no-prewhiten", is_flag=True, help="Ignore the noise scans ('noise' datasets) of the files.")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
@friendly_errors
def prep(inputs, out_dir, mask_kind, acceleration, center_fraction, seed, noise_std, shard_size, max_slices,
         no_targets, view, full_matrix, matrix, virtual_coils, workers, skip_refused, no_prewhiten, overwrite, quiet):
    """Prepare a training set from fastMRI .h5 files: one training matrix, masks, scale, coil maps, noise level,
    shards."""
    from data_prep.prepare import PrepConfig, prepare

    check_acceleration(acceleration, mask_kind, center_fraction)
    setup_torch()
    cfg = PrepConfig(mask_type=mask_kind, acceleration=acceleration, center_fraction=center_fraction, seed=seed,
                     noise_std=noise_std, shard_size=shard_size, max_slices_per_file=max_slices,
                     keep_targets=not no_targets, view=view, full_matrix=_matrix(full_matrix),
                     matrix=_matrix(matrix, hint="--matrix"), virtual_coils=virtual_coils,
                     prewhiten=not no_prewhiten)
    man = prepare(list(inputs), out_dir, cfg, overwrite=overwrite, progress=not quiet, workers=workers,
                  skip_refused=skip_refused)
    view_txt = f"; view {man['view']['spec']} of {tuple(man['view']['full_shape'])}" if man.get("view") else ""
    click.echo(f"prepared {man['num_slices']} slices ({man['num_coils']} coils, {tuple(man['image_shape'])}) "
               f"in {out_dir}; targets kept: {man['has_targets']}{view_txt}")
    run, disk = man["run"], man["disk"]
    if run["slices_per_s"]:
        click.echo(f"rate: {run['slices_per_s']:.2f} slices/s ({run['slices_per_s_per_worker']:.2f} per worker, "
                   f"{run['workers']} worker(s)); disk: {disk['bytes_per_slice'] / 1e6:.2f} MB/slice, "
                   f"{disk['prepared_over_raw']:.2f}x the raw k-space at the training matrix")
    for r in man.get("refused", []):
        click.secho(f"refused: {r['file']} ({r['slices']} slices): {r['reason']}", fg="yellow", err=True)


@main.command("mock-fastmri")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Complex-image h5 ('image', 'volume'; e.g. the SIAT T2 set): one file per volume. Default: "
              "smooth phantoms.")
@click.option("--volumes", default=None, help="--source: volume ids, e.g. 0-13 (default: all).")
@click.option("--files", type=POSITIVE_INT, default=3, show_default=True, help="Phantom files (without --source).")
@click.option("--slices", type=POSITIVE_INT, default=4, show_default=True, help="Slices per phantom file.")
@click.option("--recon", default="128x128", show_default=True, help="reconSpace HxW (the object's matrix).")
@click.option("--oversampling", type=POSITIVE_INT, default=2, show_default=True, help="Readout oversampling factor.")
@click.option("--widths", default="128,136,144", show_default=True, help="Phase-encode widths, cycled over files.")
@click.option("--coils", default="6,8,12", show_default=True, help="Coil counts, cycled over files.")
@click.option("--snr-db", type=Number(), default=30.0, show_default=True)
@click.option("--noise-scan", is_flag=True, help="Write a noise scan ('noise' (coils, samples), an extension).")
@click.option("--coil-correlation", type=Number(low=0), default=0.0, show_default=True,
              help="Correlation of the coil noise (0: white).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@friendly_errors
def mock_fastmri(out_dir, source, volumes, files, slices, recon, oversampling, widths, coils, snr_db, noise_scan,
                 coil_correlation, seed, overwrite):
    """Write small fastMRI-like multi-coil files of mixed geometry (readout oversampling, widths, coil counts)."""
    from data_prep.mock_fastmri import MockConfig, mock_folder
    from data_prep.simulate_h5 import parse_ids

    def ints(text, hint):
        try:
            vals = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected integers such as 128,136", param_hint=hint) from None
        if not vals or min(vals) < 1:
            raise click.BadParameter(f"{text!r}: values must be >= 1", param_hint=hint)
        return vals

    if volumes is not None and source is None:
        raise click.UsageError("--volumes needs --source")
    try:
        ids = parse_ids(volumes) if volumes is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--volumes") from None
    cfg = MockConfig(recon=_matrix(recon, hint="--recon"), readout_oversampling=oversampling,
                     widths=ints(widths, "--widths"), coils=ints(coils, "--coils"), snr_db=snr_db,
                     coil_correlation=coil_correlation, noise_scan=noise_scan, seed=seed)
    setup_torch()
    res = mock_folder(out_dir, cfg, source=source, volumes=ids, files=files, slices=slices, overwrite=overwrite,
                      progress=True)
    for f in res["files"]:
        click.echo(f"{out_dir / f['file']}: {f['slices']} slices, {f['coils']} coils, k-space {f['kspace'][0]}x"
                   f"{f['kspace'][1]}")


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="YAML, e.g. configs/train/gsure_r4.yaml.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Prepared set (mridiff prep).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set train.steps=100")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--minutes", type=Number(low=0, low_open=True), default=None,
              help="Stop (with a checkpoint) after this wall-clock budget.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
@friendly_errors
def train(config_path, data_dir, out_dir, overrides, resume, minutes, dry_run, device, quiet):
    """Train a denoiser D(x, sigma) (dsm, gsure, ambient or tweedie; with views: view models, then the residual;
    with an sfbd section: clean pretraining, then rounds of posterior draws and DSM fine-tuning). Multi-GPU:
    torchrun --nproc_per_node=N $(which mridiff) train ..."""
    from mri_diffusion.config import TrainConfig

    from mri_diffusion.config import ConfigError

    TrainConfig.from_yaml(config_path)  # the file alone: its own errors name the file
    try:
        cfg = TrainConfig.from_yaml(config_path, _key_values(overrides, "--set"))
    except (ConfigError, AttributeError, TypeError) as e:  # only the --set values changed: blame the option
        msg = str(e).removeprefix(f"{config_path}: ")
        raise click.BadParameter(msg if isinstance(e, ConfigError) else f"{msg} (a key under a non-mapping value)",
                                 param_hint="--set") from None
    if dry_run:
        click.echo(cfg.to_yaml(), nl=False)
        return
    if data_dir is None or out_dir is None:
        raise click.UsageError("--data and --out are required (unless --dry-run)")
    from mri_diffusion.train.stages import train_prior

    setup_torch()
    if cfg.sfbd is not None:  # SFBD samples posteriors in its backward step: recon's samplers (recon/sfbd.py)
        from recon.sfbd import train_sfbd

        res = train_sfbd(cfg, data_dir, out_dir, resume=resume, device=_device(device), progress=not quiet,
                         minutes=minutes, log=lambda m: click.echo(f"==> {m}", err=True))
    else:
        res = train_prior(cfg, data_dir, out_dir, resume=resume, device=_device(device), progress=not quiet,
                          minutes=minutes)
    if res.get("stopped_in"):
        click.echo(f"stopped in stage {res['stopped_in']} (time budget); run again with --resume to continue")
        return
    click.echo(f"step {res['step']}: checkpoint {res['checkpoint']}")


@main.command()
@click.option("--checkpoint", required=True, help="A checkpoint from mridiff train, or 'builtin'.")
@click.option("--n", type=POSITIVE_INT, default=16, show_default=True, help="Number of samples.")
@click.option("--size", default="128,128", show_default=True, help="H,W of the samples.")
@click.option("--steps", type=POSITIVE_INT, default=32, show_default=True, help="Heun steps (2N-1 network calls).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_png", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--raw-weights", is_flag=True, help="Use the raw weights instead of the EMA.")
@click.option("--overwrite", is_flag=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@friendly_errors
def sample(checkpoint, n, size, steps, seed, out_png, raw_weights, overwrite, device):
    """Draw unconditional samples from a prior (EDM Heun) and save a PNG grid of their magnitudes."""
    import numpy as np
    import torch

    from mri_diffusion.atomic import check_writable
    from mri_diffusion.train import load_denoiser
    from recon.figures import montage, save_png
    from recon.samplers import edm_heun, karras_sigmas

    H, W = _matrix(size, hint="--size", sep=",")
    setup_torch()
    check_writable(out_png, overwrite)
    dev = _device(device)
    net, cfg, _ = load_denoiser(checkpoint, use_ema=not raw_weights, device=dev)
    x = edm_heun(net, (n, H, W), karras_sigmas(steps), torch.Generator(device=dev).manual_seed(seed), dev)
    mag = x.abs().float().cpu().numpy()
    if not np.all(np.isfinite(mag)):
        raise click.ClickException("samples contain NaN/Inf; nothing written")
    save_png(out_png, montage(mag), vmax=float(np.percentile(mag, 99.5)), title=f"{cfg.name}: {n} prior samples",
             overwrite=overwrite)
    click.echo(f"wrote {out_png}")



@main.command("ood-reference")
@click.option("--checkpoint", required=True, help="The prior: a checkpoint from mridiff train, or a shipped name.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="fastMRI multi-coil files like the prior's training set, never the test files (e.g. its "
              "validation volumes).")
@click.option("--acceleration", "-R", "accelerations", type=ACCELERATION, multiple=True, default=(4.0, 8.0),
              show_default=True)
@click.option("--mask", "mask_kind", type=click.Choice(["random", "equispaced", "poisson"]), default="random",
              show_default=True)
@click.option("--max-slices", type=POSITIVE_INT, default=None, help="At most this many slices per file.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: <checkpoint>.ood.json, where recon --method auto finds it.")
@click.option("--overwrite", is_flag=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@friendly_errors
def ood_reference_cmd(checkpoint, data_dir, accelerations, mask_kind, max_slices, out_path, overwrite, device):
    """The OOD flag's reference for a prior (recon/ood.py): the median denoiser score of slices like its training
    set, which recon --method auto compares each slice's score with."""
    from recon.ood import build_reference, sidecar

    setup_torch()
    out_path = out_path or sidecar(checkpoint)
    if out_path.exists() and not overwrite:
        raise click.ClickException(f"{out_path} exists; pass --overwrite to replace it")
    ref = build_reference(checkpoint, data_dir, list(accelerations), mask_kind, _device(device), max_slices)
    ref.save(out_path, overwrite=overwrite)
    click.echo(f"wrote {out_path}: median score {ref.median:.4g} over {ref.slices} slices of {data_dir} "
               f"(R {', '.join(f'{r:g}' for r in accelerations)}, {mask_kind} masks)")


@main.command("export-prior")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--overwrite", is_flag=True)
@friendly_errors
def export_prior_cmd(checkpoint, out_path, overwrite):
    """Write a small inference-only prior (EMA weights + config + data provenance) from a training checkpoint."""
    from mri_diffusion.train import export_prior

    p = export_prior(checkpoint, out_path, overwrite=overwrite)
    click.echo(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
