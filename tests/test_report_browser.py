"""The report renders in a real browser: headless Chromium screenshot has image content, the DOM has the table.

Needs Debian's chromium (.ci/run installs it): skipped without it on a developer machine, a failure under CI=true
(``conftest.require``).
"""

import shutil
import subprocess

import h5py
import numpy as np
import pytest

from recon.evaluate import evaluate_dirs

from .conftest import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def report(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    gt = np.stack([((yy**2 + xx**2) < 0.6) * (1 + 0.3 * np.cos(8 * xx + s)) for s in range(3)]).astype(np.float32)
    (tmp_path / "t").mkdir()
    with h5py.File(tmp_path / "t" / "vol.h5", "w") as f:
        f["reconstruction_rss"] = gt
    for name, noise in (("sense_R4", 0.1), ("diffusion-gsure_R4", 0.03)):
        (tmp_path / "p" / name).mkdir(parents=True)
        with h5py.File(tmp_path / "p" / name / "vol.h5", "w") as f:
            f["reconstruction"] = gt + noise * rng.standard_normal(gt.shape).astype(np.float32)
            if "diffusion" in name:
                f["reconstruction_std"] = np.full(gt.shape, noise, np.float32)
    evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "e")
    return tmp_path / "e" / "report.html"


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = require(CHROMIUM, "Debian's chromium is not installed (.ci/run installs it)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    common = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *common, "--window-size=1400,2000", f"--screenshot={shot}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *common, "--dump-dom", report.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert "diffusion-gsure" in dom and "sense" in dom and "PSNR" in dom and "Uncertainty calibration" in dom
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape[0] >= 1000
    # the image panels: dark backgrounds with bright anatomy, i.e. many strongly non-white, varied regions
    blocks = img[: img.shape[0] // 32 * 32, : img.shape[1] // 32 * 32].reshape(img.shape[0] // 32, 32, -1, 32)
    block_std = blocks.std(axis=(1, 3))
    block_mean = blocks.mean(axis=(1, 3))
    assert np.sum((block_std > 20) & (block_mean < 200)) >= 10, "no rendered image content found"


def test_require_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    """``conftest.require`` (used here and by every real-data test): missing -> skip, or fail when CI=true."""
    missing = tmp_path / "absent"
    for value in ("", "false", "0"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception):
            require(missing, "absent")
        with pytest.raises(pytest.skip.Exception):
            require(None, "no browser")
    for value in ("true", "TRUE", "True"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="CI=true"):
            require(missing, "absent")
        with pytest.raises(pytest.fail.Exception, match="no browser"):
            require(None, "no browser")
        assert require(tmp_path, "present") == tmp_path and require("/usr/bin/x", "found") == "/usr/bin/x"
