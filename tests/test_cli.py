"""The CLI end to end on tiny files, and its bad-input behaviour (clear message, exit code, nothing lost)."""

import ast
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mri_diffusion.cli import main

from .conftest import write_multicoil

COMMANDS = ["simulate", "recon", "evaluate", "demo"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("cmd", [None] + COMMANDS)
def test_help_everywhere(cmd):
    r = run(*([cmd] if cmd else []), "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_recon_then_evaluate(tmp_path, mc_file):
    write_multicoil(mc_file.parent / "vol_b.h5", seed=5)
    for method in ("zero-filled", "sense", "l1-wavelet"):
        r = run("recon", mc_file.parent, "--out", tmp_path / "pred" / f"{method}_R4", "--method", method, "-R", 4,
                "--quiet", *(["--l1-iters", 20] if method == "l1-wavelet" else []))
        assert r.exit_code == 0, r.output
    out = tmp_path / "pred" / "sense_R4"
    assert sorted(p.name for p in out.iterdir()) == ["vol_a.h5", "vol_a.png", "vol_b.h5", "vol_b.png"]
    with h5py.File(out / "vol_a.h5") as f:
        rec = f["reconstruction"]
        assert rec.dtype == np.float32 and rec.shape == (3, 72, 64)
        assert f.attrs["method"] == "sense" and f.attrs["acceleration"] == 4.0
        assert f["mask"].shape == (64,)
    r = run("evaluate", "--pred", tmp_path / "pred", "--target", mc_file.parent, "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "sense" in html and "l1-wavelet" in html and "data:image/png;base64" in html


def test_recon_skips_finished_and_refuses_other_settings(tmp_path, mc_file):
    out = tmp_path / "o"
    assert run("recon", mc_file, "--out", out, "--method", "zero-filled", "--quiet").exit_code == 0
    before = (out / "vol_a.h5").read_bytes()
    r = run("recon", mc_file, "--out", out, "--method", "zero-filled", "--quiet")  # same settings: resumed
    assert r.exit_code == 0 and "1 finished file(s) skipped" in r.output
    r = run("recon", mc_file, "--out", out, "--method", "zero-filled", "--quiet", "-R", 8)
    assert r.exit_code == 1 and "--overwrite" in r.output and "vol_a.h5" in r.output
    assert (out / "vol_a.h5").read_bytes() == before
    assert run("recon", mc_file, "--out", out, "--method", "zero-filled", "--quiet", "--overwrite").exit_code == 0


def test_recon_bad_inputs(tmp_path, mc_file):
    r = run("recon", tmp_path / "missing.h5", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "missing.h5" in r.output
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"garbage")
    r = run("recon", junk, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "junk.h5" in r.output and "cannot open as HDF5" in r.output
    assert not (tmp_path / "o" / "junk.h5").exists()
    # NaN in one slice: refused naming file and slice, nothing written for it
    bad = write_multicoil(tmp_path / "nan.h5")
    with h5py.File(bad, "r+") as f:
        k = f["kspace"][()]
        k[2, 0, 0, 0] = np.nan
        f["kspace"][...] = k
    r = run("recon", bad, "--out", tmp_path / "o2", "--quiet")
    assert r.exit_code == 1 and "nan.h5" in r.output and "slice 2" in r.output
    assert not (tmp_path / "o2" / "nan.h5").exists()
    # single-coil file where multi-coil is expected
    sc = tmp_path / "sc.h5"
    with h5py.File(sc, "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 16, 16), np.complex64))
    r = run("recon", sc, "--out", tmp_path / "o3", "--challenge", "multicoil")
    assert r.exit_code == 1 and "expected multi-coil" in r.output
    r = run("recon", mc_file, "--out", tmp_path / "o3", "--challenge", "singlecoil")
    assert r.exit_code == 1 and "expected single-coil" in r.output


def test_folder_mode_refuses_broken_file_unless_keep_going(tmp_path, mc_file):
    (mc_file.parent / "broken.h5").write_bytes(b"\x89HDF\r\n")
    args = ["recon", str(mc_file.parent), "--out", str(tmp_path / "o"), "--quiet", "--method", "zero-filled"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "broken.h5" in r.output and "--keep-going" in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, args + ["--keep-going"])
    assert r.exit_code == 0 and "broken.h5" in r.output
    assert (tmp_path / "o" / "vol_a.h5").exists() and not (tmp_path / "o" / "broken.h5").exists()


def test_file_mask_is_used(tmp_path):
    mask = np.zeros(64)
    mask[::3] = 1
    mask[28:36] = 1
    (tmp_path / "t").mkdir()
    f = write_multicoil(tmp_path / "t" / "test_file.h5", mask=mask)
    r = run("recon", f, "--out", tmp_path / "o", "--quiet", "-R", 8)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o" / "test_file.h5") as h:
        assert np.array_equal(h["mask"][()], mask.astype(np.float32)) and h.attrs["mask_source"] == "file"


def test_device_cuda_without_gpu(mc_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run("recon", mc_file, "--out", tmp_path / "o", "--device", "cuda")
    assert r.exit_code == 1 and "CUDA is not available" in r.output


def test_layering_core_never_imports_recon_or_data_prep():
    root = Path(__file__).resolve().parents[1] / "mri_diffusion"
    for py in root.rglob("*.py"):
        if py.name == "cli.py":
            continue
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.split(".")[0] in ("recon", "data_prep"), f"{py} imports {n}"


def test_libraries_do_not_import_click():
    """mri_diffusion, data_prep and recon are usable from Python without the CLI: only the composition root
    (mri_diffusion/cli.py and its helpers cli_util.py) imports click."""
    root = Path(__file__).resolve().parents[1]
    for pkg in ("mri_diffusion", "data_prep", "recon"):
        for py in (root / pkg).rglob("*.py"):
            if py.name in ("cli.py", "cli_util.py") and pkg == "mri_diffusion":
                continue
            for node in ast.walk(ast.parse(py.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] == "click" for n in names), f"{py} imports click"


def test_ffts_only_through_physics_fft():
    """One FFT convention (centred, orthonormal): every transform in the packages goes through physics/fft.py."""
    import re

    root = Path(__file__).resolve().parents[1]
    for pkg in ("mri_diffusion", "data_prep", "recon"):
        for py in (root / pkg).rglob("*.py"):
            if py != root / "mri_diffusion" / "physics" / "fft.py":
                assert not re.search(r"\b(torch|np|numpy|scipy|sp)\.fft\b", py.read_text()), f"{py} calls an FFT"


def test_all_zero_slice_and_odd_sizes(tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    f = write_multicoil(d / "odd.h5", h=67, w=61, slices=2)
    with h5py.File(f, "r+") as h:
        k = h["kspace"][()]
        k[1] = 0
        h["kspace"][...] = k
    with pytest.warns(UserWarning, match="slice 1 is all zero"):
        r = CliRunner().invoke(main, ["recon", str(f), "--out", str(tmp_path / "o"), "--quiet"],
                               catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o" / "odd.h5") as h:
        rec = h["reconstruction"][()]
    assert rec.shape == (2, 67, 61) and np.all(np.isfinite(rec)) and not rec[1].any() and rec[0].any()
