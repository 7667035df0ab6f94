"""recon.metrics against fastmri.evaluate (the reference implementation)."""

import numpy as np
import pytest

from .conftest import require_module

fe = require_module("fastmri.evaluate")
from fastmri.data import transforms as ft  # noqa: E402

from recon import metrics as M  # noqa: E402

TOL = 1e-6


def smooth_volume(rng, shape, dtype=np.float32, slice_scales=None):
    """Random smooth positive images (sum of Gaussian blobs), shape (slices, H, W)."""
    s, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    vol = np.zeros(shape)
    for i in range(s):
        for _ in range(6):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sig = rng.uniform(2, max(h, w) / 3)
            vol[i] += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
        if slice_scales is not None:
            vol[i] *= slice_scales[i]
    return vol.astype(dtype)


def noisy(rng, gt, sigma=0.05):
    return (gt + sigma * gt.max() * rng.standard_normal(gt.shape)).astype(gt.dtype)


SHAPES = [(3, 32, 32), (2, 33, 27), (4, 40, 41), (1, 7, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fastmri_protocol_matches_fastmri(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    gt = smooth_volume(rng, shape, dtype)
    pred = noisy(rng, gt)
    assert M.nmse(gt, pred) == pytest.approx(float(fe.nmse(gt, pred)), abs=TOL, rel=TOL)
    assert M.psnr(gt, pred) == pytest.approx(float(fe.psnr(gt, pred)), abs=TOL)
    assert M.ssim(gt, pred) == pytest.approx(float(fe.ssim(gt, pred)[0]), abs=TOL)
    vm = M.volume_metrics(gt, pred)
    assert vm["nmse"] == pytest.approx(float(fe.nmse(gt, pred)), abs=TOL, rel=TOL)
    assert vm["psnr"] == pytest.approx(float(fe.psnr(gt, pred)), abs=TOL)
    assert vm["ssim"] == pytest.approx(float(fe.ssim(gt, pred)[0]), abs=TOL)


def test_explicit_maxval_matches_fastmri():
    rng = np.random.default_rng(1)
    gt = smooth_volume(rng, (3, 24, 24))
    pred = noisy(rng, gt)
    assert M.psnr(gt, pred, maxval=2.5) == pytest.approx(float(fe.psnr(gt, pred, maxval=2.5)), abs=TOL)
    assert M.ssim(gt, pred, maxval=2.5) == pytest.approx(float(fe.ssim(gt, pred, maxval=2.5)[0]), abs=TOL)


def test_slice_protocol_is_mean_of_single_slice_fastmri_scores():
    rng = np.random.default_rng(2)
    gt = smooth_volume(rng, (4, 31, 36), slice_scales=[1.0, 0.3, 2.0, 0.7])
    pred = noisy(rng, gt, 0.03)
    ref = {
        "nmse": np.mean([fe.nmse(gt[i : i + 1], pred[i : i + 1]) for i in range(4)]),
        "psnr": np.mean([fe.psnr(gt[i : i + 1], pred[i : i + 1]) for i in range(4)]),
        "ssim": np.mean([fe.ssim(gt[i : i + 1], pred[i : i + 1])[0] for i in range(4)]),
    }
    got = M.volume_metrics(gt, pred, protocol="slice")
    for k in M.METRIC_NAMES:
        assert got[k] == pytest.approx(float(ref[k]), abs=TOL, rel=TOL), k
    assert M.psnr(gt, pred, protocol="slice") == pytest.approx(got["psnr"])
    assert M.ssim(gt, pred, protocol="slice") == pytest.approx(got["ssim"])
    assert M.nmse(gt, pred, protocol="slice") == pytest.approx(got["nmse"])


def test_slice_protocol_differs_when_slice_maxima_differ():
    rng = np.random.default_rng(3)
    gt = smooth_volume(rng, (3, 32, 32), slice_scales=[1.0, 0.2, 0.05])
    pred = (gt + 0.01 * rng.standard_normal(gt.shape)).astype(np.float32)
    vol = M.volume_metrics(gt, pred, "fastmri")
    sl = M.volume_metrics(gt, pred, "slice")
    assert abs(vol["psnr"] - sl["psnr"]) > 1.0
    assert abs(vol["ssim"] - sl["ssim"]) > 1e-3
    # and the fastmri per-slice SSIM (volume max) averages to the fastMRI volume SSIM
    per = M.slice_metrics(gt, pred, "fastmri")
    assert per["ssim"].mean() == pytest.approx(float(fe.ssim(gt, pred)[0]), abs=TOL)


@pytest.mark.parametrize("shape,crop", [((5, 40, 30), (30, 30)), ((2, 41, 33), (21, 17)),
                                        ((1, 10, 10), (10, 10)), ((3, 9, 12), (4, 7))])
def test_center_crop_matches_fastmri(shape, crop):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(M.center_crop(x, crop), ft.center_crop(x, crop))


@pytest.mark.parametrize("tshape,pshape", [((2, 40, 32), (2, 40, 32)), ((2, 41, 33), (2, 64, 50)),
                                           ((2, 32, 32), (2, 32, 32)), ((2, 37, 36), (2, 37, 37))])
def test_fastmri_crop_reproduces_evaluate_py(tshape, pshape):
    rng = np.random.default_rng(4)
    target, recons = rng.random(tshape), rng.random(pshape)
    # exactly the two statements of fastmri/evaluate.py
    t = ft.center_crop(target, (target.shape[-1], target.shape[-1]))
    r = ft.center_crop(recons, (t.shape[-1], t.shape[-1]))
    gt_c, pred_c, crop = M.fastmri_crop(target, recons)
    assert crop == (tshape[-1], tshape[-1]) == M.fastmri_crop_shape(tshape)
    np.testing.assert_array_equal(gt_c, t)
    np.testing.assert_array_equal(pred_c, r)
    assert "W_t" in M.FASTMRI_CROP_RULE


def test_fastmri_crop_too_small_prediction_names_shapes():
    with pytest.raises(ValueError, match="shape mismatch") as ei:
        M.fastmri_crop(np.ones((2, 32, 32)), np.ones((2, 30, 30)))
    assert "(2, 32, 32)" in str(ei.value) and "(2, 30, 30)" in str(ei.value)


@pytest.mark.parametrize("fn", [M.nmse, M.psnr, M.ssim, M.volume_metrics])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError) as ei:
        fn(np.ones((2, 16, 16)), np.ones((2, 16, 15)))
    msg = str(ei.value)
    assert "shape mismatch" in msg and "(2, 16, 16)" in msg and "(2, 16, 15)" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["target", "prediction"])
@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_nonfinite_raises_naming_array(bad, which, protocol):
    rng = np.random.default_rng(5)
    gt = smooth_volume(rng, (3, 16, 16))
    pred = noisy(rng, gt)
    (gt if which == "target" else pred)[1, 3, 4] = bad
    with pytest.raises(ValueError) as ei:
        M.volume_metrics(gt, pred, protocol)
    msg = str(ei.value)
    assert msg.startswith(which) and "NaN or Inf" in msg and "[1]" in msg


def test_too_small_images_raise():
    with pytest.raises(ValueError, match="7x7"):
        M.ssim(np.ones((2, 6, 20)), np.ones((2, 6, 20)))
    with pytest.raises(ValueError, match="7x7"):
        M.volume_metrics(np.ones((2, 20, 5)), np.ones((2, 20, 5)), "slice")


def test_all_zero_target_raises():
    z = np.zeros((2, 16, 16), np.float32)
    for fn in (M.nmse, M.psnr, M.ssim):
        with pytest.raises(ValueError, match="all-zero"):
            fn(z, z + 0.1)
    # per-slice protocol: one all-zero slice is named
    gt = np.ones((3, 16, 16), np.float32)
    gt[2] = 0
    with pytest.raises(ValueError, match="all-zero") as ei:
        M.volume_metrics(gt, gt + 0.1, "slice")
    assert "[2]" in str(ei.value)


def test_unknown_protocol_and_complex_input():
    with pytest.raises(ValueError, match="unknown protocol"):
        M.volume_metrics(np.ones((1, 8, 8)), np.ones((1, 8, 8)), "volume")
    with pytest.raises(ValueError, match="complex"):
        M.psnr(np.ones((1, 8, 8)), np.ones((1, 8, 8)) * (1 + 1j))
