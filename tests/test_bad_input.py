"""The bad-input battery (issue 14): every case names the option, file or key, exits non-zero, and leaves the
outputs as they were. Tiny files in tmp_path; the one real-data case skips without ../shared (fails under CI)."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mri_diffusion.cli import main

from .conftest import real_path, write_multicoil

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def small(path: Path, **kw) -> Path:
    return write_multicoil(path, **{"slices": 2, "coils": 2, "h": 32, "w": 40, **kw})


def recon(*args):
    return run("recon", *args, "--method", "zero-filled", "--quiet")


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    """An untrained tiny prior (no training needed to test the option handling)."""
    from mri_diffusion.config import TrainConfig
    from mri_diffusion.nn import EDMDenoiser
    from mri_diffusion.train.checkpoint import save_checkpoint

    cfg = TrainConfig.from_yaml(TINY)
    sd = EDMDenoiser(cfg.net).state_dict()
    return save_checkpoint(tmp_path / "tiny.pt", {"config": cfg.to_dict(), "model": sd, "ema": sd, "step": 0})


# ------------------------------------------------------------------------------------------------ recon inputs


def test_folder_with_nan_and_truncated_files_fails_listing_them(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    small(d / "good.h5")
    with h5py.File(small(d / "nan.h5"), "r+") as f:
        k = f["kspace"][()]
        k[1, 0, 3, 3] = np.nan
        f["kspace"][...] = k
    (d / "trunc.h5").write_bytes((d / "good.h5").read_bytes()[:3000])
    out = tmp_path / "out"
    r = recon(d, "--out", out)
    assert r.exit_code == 1 and "trunc.h5" in r.output and "truncated or corrupt" in r.output
    assert "FILE_LOCKING" not in r.output  # no locking hint for a truncated file
    assert "--keep-going" in r.output and snapshot(out) == {}  # refused before any work
    r = recon(d, "--out", out, "--keep-going")
    assert r.exit_code == 0, r.output
    assert "2 of 3 input(s) failed" in r.output and "trunc.h5" in r.output
    assert "nan.h5: 'kspace' slice 1 contains NaN/Inf" in r.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["good.h5"]


def test_nan_file_fails_after_the_others_are_done(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    small(d / "a.h5")
    with h5py.File(small(d / "b.h5"), "r+") as f:
        f["kspace"][0, 0, 0, 0] = np.nan
    r = recon(d, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "b.h5: 'kspace' slice 0" in r.output and "1 file(s) written" in r.output
    assert not (tmp_path / "out" / "b.h5").exists() and (tmp_path / "out" / "a.h5").exists()


def test_same_file_name_from_two_folders_is_refused(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        small(tmp_path / sub / "vol.h5")
    r = recon(tmp_path / "x", tmp_path / "y" / "vol.h5", "--out", tmp_path / "out")
    assert r.exit_code == 1 and str(tmp_path / "x" / "vol.h5") in r.output and str(tmp_path / "y" / "vol.h5") in r.output
    assert snapshot(tmp_path / "out") == {}


def test_all_zero_mask_names_key_and_file(tmp_path):
    f = small(tmp_path / "t.h5", mask=np.zeros(40))
    r = recon(f, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "t.h5: 'mask' is all zero" in r.output
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize("value", ["1000", "nan", "inf", "-inf", "0.5", "abc", "30"])
def test_acceleration_must_be_finite_and_achievable(tmp_path, mc_file, value):
    r = recon(mc_file, "--out", tmp_path / "out", "-R", value)
    assert r.exit_code == 2 and "-R" in r.output, r.output
    assert snapshot(tmp_path / "out") == {}


def test_acceleration_beyond_the_width_names_the_file(tmp_path, mc_file):
    r = recon(mc_file, "--out", tmp_path / "out", "-R", 25)  # 3 centre columns of 64 at 0.04 give R <= 21.3
    assert r.exit_code == 1 and "-R 25 cannot be reached" in r.output and "vol_a.h5" in r.output


def test_requested_and_effective_acceleration_recorded_and_printed(tmp_path, mc_file):
    r = recon(mc_file, "--out", tmp_path / "out", "-R", 4)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "out" / "vol_a.h5") as f:
        mask, attrs = f["mask"][()], dict(f.attrs)
    assert attrs["acceleration"] == 4.0
    assert attrs["effective_acceleration"] == pytest.approx(mask.size / mask.sum())
    line = next(ln for ln in r.output.splitlines() if ln.startswith("used:"))
    assert "mask random" in line and "R 4 requested" in line and f"effective {mask.size / mask.sum():.3g}" in line


@pytest.mark.parametrize("option,value", [("--steps", 0), ("--steps", -1), ("--samples", 0), ("--samples", -1),
                                          ("--max-slices", 0), ("--center-fraction", 0), ("--center-fraction", 2),
                                          ("--sense-iters", 0), ("--l1-lambda", "nan"), ("--batch-slices", 0)])
def test_recon_numbers_are_validated_naming_the_option(tmp_path, mc_file, option, value):
    r = run("recon", mc_file, "--out", tmp_path / "out", option, value)
    assert r.exit_code == 2 and option in r.output, r.output
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize("option,value", [("--sampler-option", "eta=1"), ("--samples", 2), ("--l1-iters", 5)])
def test_options_the_method_ignores_are_refused(tmp_path, mc_file, option, value):
    r = run("recon", mc_file, "--out", tmp_path / "out", "--method", "sense", option, value)
    assert r.exit_code == 2 and option in r.output and "applies to --method" in r.output


@pytest.mark.parametrize("item,expect", [("foo=1", "valid: cg_iters, cg_tol, dc_weight, eta, perturb, sigma_data"),
                                         ("perturb=maybe", "expected true/false"), ("cg_iters=2.5", "integer"),
                                         ("eta=nan", "finite"), ("eta", "key=value")])
def test_sampler_options_checked_before_the_prior_loads(tmp_path, mc_file, item, expect):
    r = run("recon", mc_file, "--out", tmp_path / "out", "--method", "diffusion", "--checkpoint",
            tmp_path / "never_loaded.pt", "--sampler-option", item)
    assert r.exit_code == 2 and "--sampler-option" in r.output and expect in r.output, r.output


def test_one_sample_writes_no_std_and_every_sampler_option_is_recorded(tmp_path, tiny_ckpt):
    f = small(tmp_path / "in.h5", slices=1)
    r = run("recon", f, "--out", tmp_path / "out", "--method", "diffusion", "--checkpoint", tiny_ckpt, "--steps", 2,
            "--samples", 1, "-R", 3, "--center-fraction", 0.16, "--sampler-option", "perturb=yes",
            "--sampler-option", "cg_iters=3", "--quiet")
    assert r.exit_code == 0, r.output
    assert "no reconstruction_std is written" in r.output and "perturb=True" in r.output
    with h5py.File(tmp_path / "out" / "in.h5") as h:
        assert "reconstruction_std" not in h and h.attrs["samples"] == 1 and h.attrs["steps"] == 2
        opts = json.loads(h.attrs["sampler_options"])
    assert opts == {"eta": 0.85, "dc_weight": 1.0, "cg_iters": 3, "cg_tol": 0.0, "sigma_data": None, "perturb": True}


def test_noise_level_that_cannot_be_estimated_fails_the_same_way_in_prep_and_recon(tmp_path, tiny_ckpt):
    """One measurement model, one failure behaviour: a file without a noise_std attribute whose k-space edge is
    zero (zero-padded readout) is an error naming the file and slice in prep AND in recon (recon used to sample with
    noise level 0); --noise-std gives the level; a method that ignores the noise level is not affected."""
    d = tmp_path / "in"
    d.mkdir()
    f = small(d / "padded.h5", slices=1)
    with h5py.File(f, "r+") as h:
        k = h["kspace"][()]
        k[..., :4, :] = 0
        k[..., -4:, :] = 0
        h["kspace"][...] = k
        assert "noise_std" not in h.attrs
    want = "padded.h5: slice 0: cannot estimate the noise level from the k-space edge"
    r = run("prep", d, "--out", tmp_path / "prep", "-R", 2, "--center-fraction", 0.16, "--quiet")
    assert r.exit_code == 1 and want in r.output and "--noise-std" in r.output, r.output
    args = ("recon", f, "--method", "diffusion", "--checkpoint", tiny_ckpt, "--steps", 2, "--samples", 2, "-R", 2,
            "--center-fraction", 0.16, "--quiet")
    r = run(*args, "--out", tmp_path / "out")
    assert r.exit_code == 1 and want in r.output and snapshot(tmp_path / "out") == {}, r.output
    r = run(*args, "--out", tmp_path / "given", "--noise-std", 0.01)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "given" / "padded.h5") as h:
        assert json.loads(h.attrs["settings"])["noise_std"] == 0.01
    assert recon(f, "--out", tmp_path / "zf", "-R", 2).exit_code == 0


# ------------------------------------------------------------------------------------------------ resume


def test_rerun_resumes_skipping_finished_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in ("a", "b", "c"):
        small(d / f"{n}.h5", seed=ord(n))
    out = tmp_path / "out"
    assert recon(d, "--out", out).exit_code == 0
    (out / "b.h5").unlink()  # as if interrupted before b was written
    before = snapshot(out)
    r = recon(d, "--out", out)
    assert r.exit_code == 0 and "wrote 1 file(s)" in r.output and "2 finished file(s) skipped" in r.output
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items() if k.suffix == ".h5") and (out / "b.h5").exists()
    with h5py.File(out / "a.h5") as f:
        assert len(f.attrs["settings_fingerprint"]) == 16 and json.loads(f.attrs["settings"])["method"] == "zero-filled"
    r = recon(d, "--out", out, "--seed", 3)  # other settings: refused naming the file and what differs
    assert r.exit_code == 1 and "a.h5 exists and was made with other settings" in r.output and "mask_seed" in r.output
    assert snapshot(out) == after
    assert recon(d, "--out", out, "--seed", 3, "--overwrite").exit_code == 0


# ------------------------------------------------------------------------------------------------ evaluate


def _target(path: Path, shape=(2, 24, 24), key="reconstruction_rss", seed=0) -> np.ndarray:
    gt = (np.random.default_rng(seed).random(shape) + 0.5).astype(np.float32)
    with h5py.File(path, "w") as f:
        f[key] = gt
    return gt


def _pred(path: Path, rec: np.ndarray, **attrs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["reconstruction"] = rec.astype(np.float32)
        f.attrs.update(attrs)


@pytest.fixture
def eval_dirs(tmp_path):
    """5 targets; sense_R4 predicts all but v4, zero-filled_R4 all but v0."""
    t = tmp_path / "t"
    t.mkdir()
    for i in range(5):
        gt = _target(t / f"v{i}.h5", seed=i)
        if i != 4:
            _pred(tmp_path / "p" / "sense_R4" / f"v{i}.h5", gt * 0.95)
        if i != 0:
            _pred(tmp_path / "p" / "zero-filled_R4" / f"v{i}.h5", gt * 0.8)
    return tmp_path / "p", t, tmp_path / "e"


def test_evaluate_names_missing_pairs_and_refuses(eval_dirs):
    p, t, e = eval_dirs
    r = run("evaluate", "--pred", p, "--target", t, "--out", e)
    assert r.exit_code == 1 and "--allow-missing" in r.output
    assert "sense R4: no prediction for 1 of 5 target volume(s): v4.h5" in r.output
    assert "zero-filled R4: no prediction for 1 of 5 target volume(s): v0.h5" in r.output
    assert snapshot(e) == {}


def test_evaluate_allow_missing_is_recorded_and_says_which(eval_dirs):
    p, t, e = eval_dirs
    r = run("evaluate", "--pred", p, "--target", t, "--out", e, "--allow-missing")
    assert r.exit_code == 0, r.output
    summary = json.loads((e / "metrics.json").read_text())
    assert summary["allow_missing"] is True
    assert summary["missing"]["sense R4"]["predictions"] == ["v4.h5"]
    assert any("different sets of volumes" in n for n in summary["notes"])
    html = (e / "report.html").read_text()
    assert "v4.h5" in html and "v0.h5" in html and "--allow-missing" in html
    # the summary table is printed in the terminal
    assert "PSNR (dB)" in r.output and "sense" in r.output and "zero-filled" in r.output and "v4.h5" in r.output


def test_prediction_without_target_is_named(eval_dirs):
    p, t, e = eval_dirs
    (t / "v2.h5").unlink()
    r = run("evaluate", "--pred", p / "sense_R4", "--target", t, "--out", e)
    assert r.exit_code == 1 and "no target for prediction v2.h5" in r.output and "no prediction for" in r.output


def test_evaluate_overwrite_refusal_names_the_option(eval_dirs):
    p, t, e = eval_dirs
    assert run("evaluate", "--pred", p, "--target", t, "--out", e, "--allow-missing").exit_code == 0
    before = snapshot(e)
    r = run("evaluate", "--pred", p, "--target", t, "--out", e, "--allow-missing", "--protocol", "slice")
    assert r.exit_code == 1 and "--overwrite" in r.output and "overwrite=True" not in r.output
    assert snapshot(e) == before


def test_two_pred_folders_with_one_name_are_refused(eval_dirs, tmp_path):
    p, t, e = eval_dirs
    other = tmp_path / "q" / "sense_R4"
    shutil.copytree(p / "sense_R4", other)
    r = run("evaluate", "--pred", p / "sense_R4", "--pred", other, "--target", t, "--out", e)
    assert r.exit_code == 2 and "--pred" in r.output and str(other) in r.output


def test_target_shorter_than_the_crop_is_scored_and_shape_errors_are_true(tmp_path):
    """A 256 x 340-like single-coil target (H < W): fastMRI's (W, W) crop cannot fit; the crop keeps H."""
    t = tmp_path / "t"
    t.mkdir()
    gt = _target(t / "sc.h5", shape=(1, 26, 34), key="reconstruction_esc")
    _pred(tmp_path / "p" / "zf_R4" / "sc.h5", gt * 0.9)
    for protocol in ("fastmri", "slice"):
        r = run("evaluate", "--pred", tmp_path / "p", "--target", t, "--out", tmp_path / protocol,
                "--protocol", protocol)
        assert r.exit_code == 0, r.output
        rows = (tmp_path / protocol / "metrics.csv").read_text()
        assert "26x34" in rows
    _pred(tmp_path / "p" / "zf_R4" / "sc.h5", gt[:, :20])
    r = run("evaluate", "--pred", tmp_path / "p", "--target", t, "--out", tmp_path / "bad")
    assert r.exit_code == 1 and "(1, 20, 34) is smaller than the evaluation crop (26, 34)" in r.output


def test_real_single_coil_file_is_evaluable_under_both_protocols(tmp_path):
    src = real_path("fastmri_format", "singlecoil")
    assert recon(src, "--out", tmp_path / "p" / "zero-filled_R4").exit_code == 0
    for protocol in ("fastmri", "slice"):
        r = run("evaluate", "--pred", tmp_path / "p", "--target", src, "--out", tmp_path / protocol,
                "--protocol", protocol)
        assert r.exit_code == 0, r.output
        assert "256x340" in (tmp_path / protocol / "metrics.csv").read_text()


# ------------------------------------------------------------------------------------------------ other commands


def test_bad_checkpoints_are_not_safe_or_not_checkpoints(tmp_path, mc_file):
    rand = tmp_path / "rand.pt"
    rand.write_bytes(b"\x00\x13random bytes" * 300)
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    for path, expect in ((rand, "not a checkpoint file"), (evil, "not a safe checkpoint")):
        r = run("recon", mc_file, "--out", tmp_path / "out", "--method", "diffusion", "--checkpoint", path)
        assert r.exit_code == 1 and path.name in r.output and expect in r.output, r.output
        assert "weights_only" not in r.output and "will likely succeed" not in r.output
    assert snapshot(tmp_path / "out") == {}


class _Evil:
    def __reduce__(self):
        return (print, ("never printed",))


@pytest.mark.parametrize("option,value", [("--n", 0), ("--size", "100,abc"), ("--size", "0,8"), ("--steps", 0)])
def test_sample_options_are_validated(tmp_path, option, value):
    r = run("sample", "--checkpoint", tmp_path / "never_loaded.pt", "--out", tmp_path / "g.png", option, value)
    assert r.exit_code == 2 and option in r.output, r.output
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("args,option", [(["demo", "--accelerations", "4,abc"], "--accelerations"),
                                         (["demo", "--accelerations", "100"], "--accelerations"),
                                         (["simulate", "--coils", "0"], "--coils"),
                                         (["simulate", "--lowres", "1.5"], "--lowres"),
                                         (["prep", "IN", "-R", "nan"], "-R"),
                                         (["prep", "IN", "--max-slices", "0"], "--max-slices"),
                                         (["train", "--config", str(TINY), "--minutes", "0"], "--minutes")])
def test_other_commands_validate_numbers(tmp_path, args, option):
    (tmp_path / "in.h5").write_bytes(b"")
    args = [str(tmp_path / "in.h5") if a == "IN" else a for a in args]
    r = run(*args, "--out", tmp_path / "out")
    assert r.exit_code == 2 and option in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_set_typo_is_blamed_on_the_option():
    r = run("train", "--config", TINY, "--set", "train.stepz=3", "--dry-run")
    assert r.exit_code == 2 and "Invalid value for" in r.output and "--set" in r.output and "train.stepz" in r.output
    assert f"{TINY}:" not in r.output


def test_warnings_are_printed_as_messages_only(tmp_path, mc_file):
    (mc_file.parent / "notes.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # print as a user would see it (Python's default path: formatwarning -> stderr), not pytest's recorder
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(m, c, f, n, line))
        r = recon(mc_file.parent, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "warning: skipping" in r.output and "notes.txt: not an .h5 file" in r.output
    assert ".py:" not in r.output and "warnings.warn" not in r.output


def test_png_title_is_wrapped_not_clipped():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from recon.figures import figure

    fig = figure(np.ones((40, 48)), title="a_rather_long_file_name.h5  diffusion-gsure-builtin  R=4 (effective 3.83)")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


def test_training_log_heldout_from_measured_data_only(tmp_path):
    """The 'heldout' column: finite, the same for the same weights, and computed without targets."""
    from data_prep.prepare import PrepConfig, prepare
    from mri_diffusion.config import TrainConfig
    from mri_diffusion.data import PreparedDataset
    from mri_diffusion.train.ema import EMA
    from mri_diffusion.train.loop import HeldOut, train

    (tmp_path / "src").mkdir()
    small(tmp_path / "src" / "a.h5", slices=3, coils=4, noise=0.02)
    prepare([tmp_path / "src"], tmp_path / "set", PrepConfig(acceleration=3.0, center_fraction=0.16), progress=False)
    shutil.rmtree(tmp_path / "set" / "targets")
    cfg = TrainConfig.from_yaml(TINY, {"train.steps": 2})
    train(cfg, tmp_path / "set", tmp_path / "run", progress=False, tensorboard=False)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "heldout" and all(np.isfinite(float(r.split(",")[3])) for r in rows[1:])
    from mri_diffusion.nn import EDMDenoiser

    net = EDMDenoiser(cfg.net)
    h = HeldOut(PreparedDataset(tmp_path / "set"), cfg, net, torch.device("cpu"))
    assert h.batch.target is None and h.hold.sum() > 0 and torch.all(h.hold <= h.batch.mask)
    assert h(EMA(net, 2)) == h(EMA(net, 2)) > 0
