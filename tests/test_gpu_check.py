"""benchmarks/gpu_check.py and the device-parametrised tests it runs on a GPU.

The ``device`` fixture (conftest) gives "cpu" and "cuda" (skipped without a GPU); ``gpu_check.py`` runs this
file with MRIDIFF_TEST_DEVICES=cuda and CI=true, where a skip is a failure. Each device test compares the
device against the CPU or against closed-form truth, so the CPU run checks the test itself.
The last tests run ``gpu_check.py --cpu-smoke`` (tiny sizes, every part) and check its JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mri_diffusion.config import LossOptions
from mri_diffusion.losses import make_loss
from mri_diffusion.nn import build_denoiser
from mri_diffusion.physics import (CoilMaps, FFT2c, LowResView, Sense, adjoint_error, conjugate_gradient, fft2c,
                                   ifft2c, pinv)
from mri_diffusion.physics.calib import estimate_maps
from mri_diffusion.physics.compress import compress, compression_matrix
from mri_diffusion.physics.masks import RandomMask
from mri_diffusion.physics.sense import CartesianMask
from recon.samplers import SAMPLER_NAMES, NoiseSource, default_sigmas, derive_seed, get_sampler

from .test_physics import crandn, random_sense
from .test_samplers import _FEW, GaussDenoiser, _small_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gsure_inverse import head_maps, phantom, realistic_batch, smooth_denoiser  # noqa: E402
from train_cost import synthetic_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def trained_like_tiny_net(device):
    """The tiny EDM net with perturbed weights (EDM zero-initialises the output layer, which would make D linear),
    drawn on the CPU so that every device gets the same weights."""
    torch.manual_seed(0)
    net = build_denoiser("tiny").eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.to(device)


# ------------------------------------------------------------------------------------------ device tests

@pytest.mark.parametrize("two_d", [False, True])
def test_operator_adjoints_on_device(device, two_d):
    maps, mask = (t.to(device) for t in random_sense(two_d=two_d))
    B, C, H, W = maps.shape
    x, y = crandn(B, H, W, seed=1).to(device), crandn(B, C, H, W, seed=2).to(device)
    A = Sense(maps, mask)
    ops = {"fft": (FFT2c(), x, crandn(B, H, W, seed=3).to(device)), "maps": (CoilMaps(maps), x, y),
           "mask": (CartesianMask(mask), y, crandn(B, C, H, W, seed=4).to(device)), "sense": (A, x, y),
           "sense.H": (A.H, y, x), "normal": (A.N, x, crandn(B, H, W, seed=7).to(device)),
           "lowres": (LowResView((H, W), (10, 9)), x, crandn(B, 10, 9, seed=9).to(device))}
    for name, (op, a, b) in ops.items():
        assert op(a).device.type == device.type, name
        assert adjoint_error(op, a, b) < 1e-5, name
    assert torch.allclose(A.normal(x), A.adjoint(A(x)), atol=1e-5)
    assert rel_err(fft2c(x), fft2c(x.cpu())) < 1e-6
    assert rel_err(A(x), Sense(maps.cpu(), mask.cpu())(x.cpu())) < 1e-6


def test_cg_and_pinv_on_device(device):
    maps, mask = (t.to(device) for t in random_sense(seed=3))
    A = Sense(maps, mask)
    xtrue = crandn(2, 20, 17, seed=4).to(device)
    b = A.normal(xtrue) + 0.1 * xtrue
    x = conjugate_gradient(lambda v: A.normal(v) + 0.1 * v, b, max_iter=200, tol=1e-8)
    assert x.device.type == device.type and torch.allclose(x, xtrue, atol=1e-3)
    y = A(xtrue)
    ref = pinv(Sense(maps.cpu(), mask.cpu()), y.cpu(), max_iter=30)
    assert rel_err(pinv(A, y, max_iter=30), ref) < 1e-4


def test_coil_maps_and_compression_on_device(device):
    """ESPIRiT maps (recon's estimate_maps) and SVD coil compression 15 -> 8 on the device equal the CPU's."""
    maps15, supp = head_maps(15, 64, 64)
    k = fft2c(maps15[0] * phantom(supp))
    mask = RandomMask(4.0).sample((64, 64), 0)
    k = k * mask
    out = {}
    for d in ("cpu", device):
        kk, m = k.to(d), mask.to(d)
        U, share = compression_matrix(kk, m, 8)
        k8 = compress(kk, U)
        out[str(d)] = (share, k8, estimate_maps(k8, m, phase_ref=U[0]))
    (s_cpu, k_cpu, m_cpu), (s_dev, k_dev, m_dev) = out["cpu"], out[str(device)]
    assert m_dev.device.type == device.type and abs(s_cpu - s_dev) < 1e-4
    # virtual coils are defined up to a phase each: compare magnitudes
    assert rel_err(k_dev.abs(), k_cpu.abs()) < 1e-3
    # the coil-combined image the prior sees, S^H F^H k, must agree with its phase (reference: physical coil 0)
    img = lambda kk, mm: (mm.conj() * ifft2c(kk)).sum(0)  # noqa: E731
    assert rel_err(img(k_dev, m_dev), img(k_cpu, m_cpu)) < 1e-3


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_on_device_matches_cpu(device, name):
    """Counter-based noise is the same on every device, so a sampler's output is too (up to float rounding; the
    network's convolutions may run in TF32 on a GPU): the exact-Gaussian denoiser and the tiny EDM net."""
    maps, mask, y, nstd = _small_batch(3)
    gauss = GaussDenoiser(0.1 * torch.ones(6, 5, dtype=torch.complex64), torch.full((6, 5), 0.7))
    seeds = [derive_seed("vol.h5", s, 0) for s in range(3)]
    sig = default_sigmas(name, 4, sigma_max=5.0)
    fn = get_sampler(name)
    for label, den_cpu, den_dev, tol in (
            ("gauss", gauss, GaussDenoiser(gauss.mu.to(device), gauss.g.to(device)), 1e-4),
            ("edm", trained_like_tiny_net("cpu"), trained_like_tiny_net(device), 2e-2)):
        ref = fn(den_cpu, y, Sense(maps, mask), sig, noise=NoiseSource(seeds), noise_std=nstd, **_FEW[name])
        with torch.set_grad_enabled(name == "dps"):
            out = fn(den_dev, y.to(device), Sense(maps.to(device), mask.to(device)), sig.to(device),
                     noise=NoiseSource(seeds), noise_std=nstd.to(device), **_FEW[name])
        assert out.device.type == device.type and bool(torch.isfinite(torch.view_as_real(out)).all())
        assert rel_err(out, ref) < tol, (name, label, rel_err(out, ref))


@pytest.mark.parametrize("loss", ["dsm", "gsure", "ambient"])
def test_loss_step_on_device(device, loss):
    """One training step of each loss as the loop runs it (bf16 autocast on CUDA): finite loss and gradients."""
    net = trained_like_tiny_net(device).train()
    batch = synthetic_batch(2, 4, 32, 32, device)
    fn = make_loss(loss, LossOptions(inverse_iters=5))
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        per_sample = fn(net, batch, torch.Generator(device=device).manual_seed(0))
    assert per_sample.shape == (2,) and per_sample.device.type == device.type
    per_sample.float().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gsure_unbiased_on_device(device):
    """GSURE at realistic conditioning (support-limited 8-coil maps, 4x) on the device: unbiased within Monte-Carlo
    error (tests/test_gsure.py does this on the CPU with 300 draws of 40^2; fewer and smaller on the CPU here)."""
    from .test_gsure import _bias, _z

    K, n = (300, 40) if device.type == "cuda" else (100, 24)
    batch, x, _ = realistic_batch(K, n, 4.0, 0.05)
    batch, x = batch.to(device), x.to(device)
    sigma = torch.full((K,), 1.05 * 0.05 / math.sqrt(2), device=device)
    t, diff = _bias(batch, x, torch.Generator(device=device).manual_seed(7), sigma, smooth_denoiser, divergence="jvp")
    assert diff.device.type == device.type
    assert abs(_z(diff)) < 3, _z(diff)
    assert abs(_z(diff - t["div"])) > 5  # the check can fail: without the divergence the estimate is far off


def test_gsure_divergence_bf16_on_device(device):
    """The directional derivative under bf16 autocast is within 5 % of an fp32 JVP; a bf16 difference is not."""
    d = gpu_check.divergence_bf16(device)
    assert d["fd"] <= 0.05, d
    assert d["naive"] > 0.5, d


# ------------------------------------------------------------------------------------------ the script

def test_failed_or_slow_part_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    def boom(plan, dev, work, part):
        part.add("a number before the failure", 1.0, "x")
        raise RuntimeError("planted failure")

    def slow(plan, dev, work, part):
        import time

        time.sleep(30)

    def fine(plan, dev, work, part):
        part.add("fine", 2.0, "x")

    monkeypatch.setitem(gpu_check.FUNCS, "tests", boom)
    monkeypatch.setitem(gpu_check.FUNCS, "train", slow)
    monkeypatch.setitem(gpu_check.FUNCS, "recon", fine)
    out = tmp_path / "r.json"
    rc = gpu_check.main(["--cpu-smoke", "--parts", "tests,train,recon", "--budget-scale", "0.01", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rc == 1 and not rep["ok"] and rep["failed"] == ["tests", "train"]
    assert "planted failure" in rep["parts"]["tests"]["error"] and rep["parts"]["tests"]["rows"][0]["value"] == 1.0
    assert "OverBudget" in rep["parts"]["train"]["error"] and rep["parts"]["train"]["seconds"] < 5
    assert rep["parts"]["recon"]["ok"] and rep["parts"]["recon"]["rows"][0]["value"] == 2.0


def test_cpu_smoke_writes_every_part(tmp_path):
    """The whole script in its CPU mode: every part runs, passes, and has numbers (must stay well under 60 s)."""
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MRIDIFF_TEST_DEVICES", "CI")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "GPU check (cpu-smoke)" in r.stdout and "ALL OK" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["ok"] and rep["failed"] == [] and rep["machine"]["torch"] == torch.__version__
    assert list(rep["parts"]) == list(gpu_check.PARTS)
    for name, part in rep["parts"].items():
        assert part["ok"] and part["error"] is None and 0 < part["seconds"] < part["budget_s"], name
        assert part["rows"], name
        for row in part["rows"]:
            assert isinstance(row["value"], float) and math.isfinite(row["value"]), (name, row)
    units = lambda name: [r["unit"] for r in rep["parts"][name]["rows"]]  # noqa: E731
    assert units("train").count("img/s") == 3 * 2 and all(r["value"] > 0 for r in rep["parts"]["train"]["rows"])
    assert units("recon").count("s/slice") == 2 * 3 and all(r["value"] > 0 for r in rep["parts"]["recon"]["rows"])
    tests = {r["item"]: r["value"] for r in rep["parts"]["tests"]["rows"]}
    assert tests["device tests on cpu: passed"] > 10 and tests["  skipped (a failure here)"] == 0
    ddp = rep["parts"]["ddp"]
    assert ddp["info"]["nproc"] == 2 and ddp["info"]["backend"] == "gloo" and ddp["rows"][-1]["value"] < 1e-4
