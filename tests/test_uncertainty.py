"""Uncertainty calibration: exact on synthetic Gaussian errors, reported by evaluate when std maps exist."""

import h5py
import numpy as np

from recon.evaluate import evaluate_dirs
from recon.uncertainty import calibration


def test_calibration_of_a_known_gaussian_error():
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 2, (3, 40, 40))
    std = rng.uniform(0.01, 0.2, target.shape)
    recon = target + std * rng.standard_normal(target.shape)
    c = calibration(target, recon, std)
    assert abs(c["within_2std"] - 0.9545) < 0.01  # |N(0, s^2)| <= 2 s
    assert abs(c["ratio"] - np.sqrt(2 / np.pi)) < 0.02  # E|N(0, s^2)| = s sqrt(2/pi)
    assert c["corr"] > 0.4
    wrong = calibration(target, recon, np.full_like(std, std.mean()))  # a std map that ignores where errors are
    assert wrong["corr"] < 0.05


def test_evaluate_reports_uncertainty(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "t").mkdir()
    (tmp_path / "p" / "diffusion_R4").mkdir(parents=True)
    gt = rng.uniform(0.5, 1, (2, 24, 24)).astype(np.float32)
    std = rng.uniform(0.01, 0.1, gt.shape).astype(np.float32)
    with h5py.File(tmp_path / "t" / "v.h5", "w") as f:
        f["reconstruction_rss"] = gt
    with h5py.File(tmp_path / "p" / "diffusion_R4" / "v.h5", "w") as f:
        f["reconstruction"] = gt + std * rng.standard_normal(gt.shape).astype(np.float32)
        f["reconstruction_std"] = std
    res = evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "e")
    u = res.summary["uncertainty"][0]
    # the error is exactly N(0, std^2): P(|e| <= 2 std) = 0.9545, within 4 binomial standard errors
    se = np.sqrt(0.9545 * 0.0455 / gt.size)
    assert u["method"] == "diffusion" and abs(u["within_2std"] - 0.9545) < 4 * se, (u["within_2std"], se)
    assert "Uncertainty calibration" in (tmp_path / "e" / "report.html").read_text()


def test_ideal_reference_matches_a_calibrated_sampler_through_calibration():
    """A posterior sampled K = 4 times, truth drawn from the same posterior, with per-pixel widths: the pooled
    calibration equals ideal(4) (not 95 %), and a sampler whose std is 1.5x too small falls clearly below it."""
    from recon.uncertainty import ideal

    K = 4
    truth, mean, std = _posterior_draws(np.random.default_rng(2), K, (4, 64, 64))
    ref, got = ideal(K), calibration(truth, mean, std)
    assert abs(ref["within_2std"] - 0.929) < 0.005 and abs(ref["ratio"] - 0.76) < 0.01
    assert abs(got["within_2std"] - ref["within_2std"]) < 0.01 and abs(got["ratio"] - ref["ratio"]) < 0.03
    under = calibration(truth, mean, std / 1.5)
    assert under["within_2std"] < ref["within_2std"] - 0.1


def _posterior_draws(rng, K, shape):
    """Truth and K samples i.i.d. from one complex Gaussian per pixel (a calibrated posterior); returns the
    magnitudes of truth and K-sample mean and the K-sample std (as ``recon.diffusion`` computes it)."""
    mu = rng.uniform(50, 100, shape) * np.exp(1j * rng.uniform(0, 6, shape))
    sig = rng.uniform(0.5, 2.0, shape)
    cn = lambda *s: (rng.standard_normal(s) + 1j * rng.standard_normal(s)) / np.sqrt(2)  # noqa: E731
    draws = mu + sig * cn(K, *shape)
    truth = np.abs(mu + sig * cn(*shape))
    mean = draws.mean(0)
    return truth, np.abs(mean), np.sqrt((np.abs(draws - mean) ** 2).mean(0))


def test_evaluate_reports_a_calibrated_posterior_at_the_ideal_reference(tmp_path):
    """Through the whole evaluate path (files with ``samples`` = K, fastMRI crop, pooling, report): a calibrated
    K = 4 posterior is reported at ideal(4), within Monte-Carlo error derived from the pixel count, and the
    report shows that reference next to it; a posterior whose std is 1.5x too small (what under-dispersed
    samplers produce) is reported clearly below it. No method's measured numbers are expected values here."""
    from recon.uncertainty import ideal

    rng = np.random.default_rng(3)
    K, shape = 4, (3, 48, 48)
    truth, mean, std = _posterior_draws(rng, K, shape)
    (tmp_path / "t").mkdir()
    with h5py.File(tmp_path / "t" / "v.h5", "w") as f:
        f["reconstruction_rss"] = truth.astype(np.float32)
    for name, s in (("calibrated_R4", std), ("under_R4", std / 1.5)):
        (tmp_path / "p" / name).mkdir(parents=True)
        with h5py.File(tmp_path / "p" / name / "v.h5", "w") as f:
            f["reconstruction"] = mean.astype(np.float32)
            f["reconstruction_std"] = s.astype(np.float32)
            f.attrs["samples"] = K
    res = evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "e")
    rows = {r["method"]: r for r in res.summary["uncertainty"]}
    ref, n = ideal(K), truth.size
    # Monte-Carlo standard errors of the pooled statistics (pixels independent): binomial for the fraction;
    # for the ratio mean(e) / mean(s), the delta method on e - ratio * s
    e = np.abs(mean - truth)
    se_frac = np.sqrt(ref["within_2std"] * (1 - ref["within_2std"]) / n)
    se_ratio = np.std(e - ref["ratio"] * std) / (np.sqrt(n) * std.mean())
    got = rows["calibrated"]
    assert got["samples"] == K and got["pixels"] == n
    assert abs(got["within_2std"] - ref["within_2std"]) < 4 * se_frac + 0.002, (got, ref, se_frac)
    assert abs(got["ratio"] - ref["ratio"]) < 4 * se_ratio + 0.005, (got, ref, se_ratio)
    under = rows["under"]
    assert under["within_2std"] < ref["within_2std"] - 10 * se_frac and under["ratio"] > ref["ratio"] + 10 * se_ratio
    html = (tmp_path / "e" / "report.html").read_text()
    assert f"{100 * ref['within_2std']:.1f} % / {ref['ratio']:.2f}" in html
