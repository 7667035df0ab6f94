"""mridiff recon --method diffusion and the demo, end to end on tiny data."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mri_diffusion.cli import main
from mri_diffusion.config import TrainConfig
from mri_diffusion.train.loop import train

from .conftest import write_multicoil
from .test_train import TINY


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    from data_prep.prepare import PrepConfig, prepare

    d = tmp_path_factory.mktemp("prior")
    (d / "src").mkdir()
    write_multicoil(d / "src" / "a.h5", slices=2, coils=4, h=40, w=48, noise=0.02)
    prepare([d / "src"], d / "set", PrepConfig(acceleration=3.0, center_fraction=0.16), progress=False)
    cfg = TrainConfig.from_yaml(TINY, {"train.steps": 2})
    train(cfg, d / "set", d / "run", progress=False, tensorboard=False)
    (d / "test").mkdir()
    write_multicoil(d / "test" / "t.h5", slices=2, coils=4, h=40, w=48, noise=0.02, seed=7)
    return d / "run" / "checkpoint.pt", d / "test" / "t.h5"


@pytest.mark.parametrize("sampler", ["dds", "dps", "pc", "langevin", "cg"])
def test_recon_diffusion_every_sampler(tiny_prior, tmp_path, sampler):
    ckpt, f = tiny_prior
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "o"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--sampler", sampler, "--steps", "3", "--samples", "2",
                                  "-R", "3", "--center-fraction", "0.16", "--quiet", "--save-samples"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o" / "t.h5") as h:
        rec, std = h["reconstruction"][()], h["reconstruction_std"][()]
        assert rec.shape == std.shape == (2, 40, 48) and np.all(np.isfinite(rec)) and np.all(std >= 0)
        assert h["reconstruction_samples"].shape == (2, 2, 40, 48)
        assert h.attrs["sampler"] == {"cg": "dds"}.get(sampler, sampler)  # cg: the old name of dds, still accepted
        assert h.attrs["network_calls_per_sample"] > 0
        assert h.attrs["method"] == "diffusion-tiny"
    assert (tmp_path / "o" / "t.png").exists()


def test_recon_auto_guard_end_to_end(tiny_prior, tmp_path):
    """--method auto: the guarded reconstruction writes its choice per slice, the unguarded posterior next to it,
    refuses guard options for other methods, and its report panels show the choice."""
    import json

    ckpt, f = tiny_prior
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(out), "--method", "auto", "--checkpoint", str(ckpt),
                                  "--steps", "3", "--samples", "2", "-R", "3", "--center-fraction", "0.16", "--quiet",
                                  "--guard-l1-grid", "1e-3,1e-2", "--l1-iters", "10", "--sense-iters", "5"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "guarded" in r.output and "l1-wavelet:0.01" in r.output
    with h5py.File(out / "t.h5") as h:
        infos = json.loads(h.attrs["slice_info"])
        assert len(infos) == 2 and h.attrs["method"] == "auto-tiny"
        for i, info in enumerate(infos):
            assert info["choice"] in ("diffusion", "blend", "l1-wavelet:0.001", "l1-wavelet:0.01", "sense")
            assert 0 <= info["alpha"] <= 1
            assert isinstance(info["ood_flag"], bool) and info["folds"] == 2 and info["reason"]
            assert set(info["est_psnr"]) == {"diffusion", "blend", "l1-wavelet:0.001", "l1-wavelet:0.01", "sense"}
            if info["choice"] == "diffusion":
                np.testing.assert_allclose(h["reconstruction"][i], h["reconstruction_diffusion"][i], rtol=1e-5)
        assert h.attrs["ood_flags"] == sum(i["ood_flag"] for i in infos)
        assert h["reconstruction_std"].shape == h["reconstruction_diffusion_std"].shape == (2, 40, 48)
    from recon.evaluation.load import guard_note, read_slice_info

    assert guard_note(read_slice_info(out / "t.h5", 1)).startswith("guard chose ")
    r = CliRunner().invoke(main, ["evaluate", "--pred", str(out), "--target", str(f.parent), "--out",
                                  str(tmp_path / "ev")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader(open(tmp_path / "ev" / "metrics_slices.csv")))
    assert [row["guard_choice"] for row in rows] == [i["choice"] for i in infos]
    assert [row["ood_flag"] for row in rows] == [str(int(i["ood_flag"])) for i in infos]
    for row, i in zip(rows, infos):  # the guard's own estimate of the written image, where it has one
        est = i["est_psnr"].get(i["choice"])
        assert row["guard_est_psnr"] == ("" if est is None or not math.isfinite(est) else str(round(est, 3)))
        if row["guard_est_psnr"]:
            assert f"estimated {est:.1f} dB PSNR" in guard_note(i)
    assert "guard chose" in (tmp_path / "ev" / "report.html").read_text()
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "x"), "--method", "sense",
                                  "--guard-folds", "3"])
    assert r.exit_code == 2 and "--guard-folds applies to --method auto only" in r.output
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "x"), "--method", "auto"])
    assert r.exit_code == 2 and "--method auto needs --checkpoint" in r.output


def test_recon_schedule_options(tiny_prior, tmp_path):
    """--steps / --sigma-max / --sigma-min / --rho set the sampler's levels (recorded in the output), a wrong
    schedule is refused before anything runs, and the options are refused for classical methods."""
    ckpt, f = tiny_prior
    base = ["recon", str(f), "--method", "diffusion", "--checkpoint", str(ckpt), "--samples", "1", "-R", "3",
            "--center-fraction", "0.16", "--quiet"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "o"), "--steps", "4", "--sigma-max", "1",
                                         "--sigma-min", "0.01", "--rho", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o" / "t.h5") as h:
        assert np.allclose(json.loads(h.attrs["sigmas"]), [1.0, 0.67, 0.34, 0.01, 0.0])
        assert h.attrs["network_calls_per_sample"] == 4
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--sigma-max", "0.001"])
    assert r.exit_code == 2 and "sigma_min < sigma_max" in r.output and not (tmp_path / "x").exists()
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--sampler", "pc", "--rho", "3"])
    assert r.exit_code == 2 and "rho applies to Karras" in r.output
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "x"), "--method", "sense",
                                  "--sigma-max", "1"])
    assert r.exit_code == 2 and "--sigma-max applies to --method diffusion" in r.output


def test_recon_diffusion_needs_checkpoint_and_refuses_nan(tiny_prior, tmp_path, monkeypatch):
    ckpt, f = tiny_prior
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "o"), "--method", "diffusion"])
    assert r.exit_code == 2 and "--checkpoint" in r.output
    from mri_diffusion.nn.precond import EDMDenoiser

    real = EDMDenoiser.forward
    monkeypatch.setattr(EDMDenoiser, "forward", lambda self, x, s: real(self, x, s) * float("nan"))
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "o"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--steps", "2", "--samples", "1", "-R", "3",
                                  "--center-fraction", "0.16", "--quiet"])
    assert r.exit_code == 1 and "t.h5: slice 0" in r.output and "NaN" in r.output
    assert not (tmp_path / "o" / "t.h5").exists()


def test_recon_diffusion_bad_checkpoint(tmp_path, mc_file):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(main, ["recon", str(mc_file), "--out", str(tmp_path / "o"), "--method", "diffusion",
                                  "--checkpoint", str(bad)])
    assert r.exit_code == 1 and "bad.pt" in r.output


def test_demo_end_to_end_on_tiny_volume(tmp_path, one_thread):
    from data_prep.simulate import SimConfig
    from recon.demo import run_demo

    from .test_simulate import _nifti

    src = _nifti(tmp_path / "v.nii.gz", shape=(44, 52, 40))
    res = run_demo(src, tmp_path / "demo", [4.0], device=torch.device("cpu"), minutes=0.05, samples=1,
                   sim_config=SimConfig(matrix=48, coils=4, slice_step=1, chunk=3, gap=1), l1_grid=(1e-3,))
    html = res["report"].read_text()
    for name in ("zero-filled", "sense", "l1-wavelet", "diffusion-gsure-demo"):
        assert name in html


def test_recon_diffusion_single_coil_and_other_size(tiny_prior, tmp_path):
    """The prior is over coil-combined images: it runs on single-coil files and on other matrix sizes."""
    ckpt, _ = tiny_prior
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 52, 36)) + 1j * rng.standard_normal((2, 52, 36))).astype(np.complex64)
    f = tmp_path / "sc.h5"
    with h5py.File(f, "w") as h:
        h["kspace"] = k
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "o"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--steps", "3", "--samples", "2", "-R", "3",
                                  "--center-fraction", "0.2", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o" / "sc.h5") as h:
        assert h["reconstruction"].shape == (2, 52, 36) and np.all(np.isfinite(h["reconstruction"][()]))


def test_diffusion_compresses_many_coils_by_default(tiny_prior, tmp_path):
    """--virtual-coils auto: 8 virtual coils for diffusion on a 10-coil scan, all coils for SENSE; a bad value is
    a clear error."""
    ckpt, _ = tiny_prior
    f = write_multicoil(tmp_path / "ten.h5", slices=1, coils=10, h=40, w=48, noise=0.01)
    base = [str(f), "-R", "3", "--center-fraction", "0.2", "--quiet"]
    r = CliRunner().invoke(main, ["recon", *base, "--out", str(tmp_path / "d"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--steps", "3", "--samples", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["recon", *base, "--out", str(tmp_path / "s"), "--method", "sense"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "d" / "ten.h5") as d, h5py.File(tmp_path / "s" / "ten.h5") as s:
        assert d.attrs["virtual_coils"] == 8 and 0.9 < d.attrs["coil_energy_kept"] <= 1.0
        assert "virtual_coils" not in s.attrs
    r = CliRunner().invoke(main, ["recon", *base, "--out", str(tmp_path / "x"), "--virtual-coils", "many"])
    assert r.exit_code != 0 and "--virtual-coils" in r.output


@pytest.mark.parametrize("sampler", ["dds", "dps"])
def test_batching_slices_changes_nothing(tiny_prior, tmp_path, sampler):
    """--batch-slices 2 (slices x samples in one sampler run) gives the slice-by-slice result: noise is seeded
    per (file, slice, sample) and every sampler works per batch element."""
    ckpt, f = tiny_prior
    out = {}
    for b in (1, 2):
        r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / f"b{b}"), "--method", "diffusion",
                                      "--checkpoint", str(ckpt), "--sampler", sampler, "--steps", "4",
                                      "--samples", "2", "-R", "3", "--center-fraction", "0.16", "--quiet",
                                      "--batch-slices", str(b)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        with h5py.File(tmp_path / f"b{b}" / "t.h5") as h:
            out[b] = (h["reconstruction"][()], h["reconstruction_std"][()])
    for a, b in zip(out[1], out[2]):
        assert a.shape == (2, 40, 48) and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert out[1][1].max() > 0  # the std is not trivially zero


def test_run_methods_reuses_only_matching_settings(tmp_path):
    """A finished method folder is reused for the same settings and redone when they change (e.g. slices)."""
    from recon.experiment import Method, run_methods
    from recon.pipeline import classical_method

    (tmp_path / "t").mkdir()
    write_multicoil(tmp_path / "t" / "v.h5", slices=3, coils=2, h=24, w=24)
    zf = [Method("zero-filled", lambda R: classical_method("zero-filled"), needs_maps=False)]
    out = tmp_path / "r"
    for n in (1, 1, 2):
        run_methods(tmp_path / "t", out, zf, [4.0], torch.device("cpu"), max_slices=n, progress=False)
        with h5py.File(out / "zero-filled_R4" / "v.h5") as h:
            assert h["reconstruction"].shape[0] == n and h.attrs["code_commit"]


def test_resume_accepts_files_made_under_the_old_sampler_name(tiny_prior, tmp_path):
    """A file written as sampler 'cg' (before the rename to dds) counts as finished for the same settings."""
    import json

    from recon.pipeline import fingerprint

    ckpt, f = tiny_prior
    args = ["recon", str(f), "--out", str(tmp_path / "o"), "--method", "diffusion", "--checkpoint", str(ckpt),
            "--steps", "2", "--samples", "2", "-R", "3", "--center-fraction", "0.16", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    with h5py.File(tmp_path / "o" / "t.h5", "r+") as h:
        settings = {**json.loads(h.attrs["settings"]), "sampler": "cg"}
        h.attrs["settings"] = json.dumps(settings, sort_keys=True)
        h.attrs["settings_fingerprint"] = fingerprint(settings)
    r = CliRunner().invoke(main, args + ["--sampler", "cg"])
    assert r.exit_code == 0 and "1 finished file(s) skipped" in r.output, r.output


def test_ood_reference_command_and_the_guard_using_it(tiny_prior, tmp_path):
    """mridiff ood-reference writes the prior's reference (never over an existing one without --overwrite);
    recon --method auto flags by it and records each slice's score ratio."""
    ckpt, f = tiny_prior
    ref = tmp_path / "tiny.ood.json"
    args = ["ood-reference", "--checkpoint", str(ckpt), "--data", str(f.parent), "-R", "3", "--out", str(ref)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    saved = json.loads(ref.read_text())
    assert saved["slices"] == 2 and saved["median"] > 0 and saved["accelerations"] == [3.0]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "exists" in r.output
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(out), "--method", "auto", "--checkpoint", str(ckpt),
                                  "--steps", "3", "--samples", "2", "-R", "3", "--center-fraction", "0.16", "--quiet",
                                  "--l1-iters", "10", "--sense-iters", "5", "--ood-reference", str(ref),
                                  "--guard-flag-score", "1e-6", "--guard-cv-folds", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "denoiser score > 1e-06 x its median" in r.output
    with h5py.File(out / "t.h5") as h:
        infos = json.loads(h.attrs["slice_info"])
    assert all(i["ood_flag"] is True and i["ood_score_ratio"] > 0 for i in infos)
    # flagged: a classical reconstruction, chosen by 3-fold cross-validation
    assert all(i["alpha"] == 0 and i["cv_error"] and "(3 folds" in i["reason"] for i in infos)
    assert all(i["choice"] == min(i["cv_error"], key=i["cv_error"].get) for i in infos)
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "y"), "--method", "auto", "--checkpoint",
                                  str(ckpt), "--guard-cv-folds", "1"])
    assert r.exit_code == 2 and "--guard-cv-folds" in r.output
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "y"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--guard-cv-mix"])
    assert r.exit_code == 2 and "--guard-cv-mix applies to --method auto only" in r.output
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "y"), "--method", "diffusion",
                                  "--checkpoint", str(ckpt), "--no-guard-cv-partner"])
    assert r.exit_code == 2 and "--guard-cv-partner applies to --method auto only" in r.output
    (tmp_path / "bad.json").write_text("{}")
    r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "x"), "--method", "auto", "--checkpoint",
                                  str(ckpt), "--ood-reference", str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "bad.json" in r.output
