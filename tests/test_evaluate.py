"""recon.evaluate.evaluate_dirs on tiny fastMRI-like folders."""

import csv
import html as html_lib
import json
import re
import warnings

import h5py
import numpy as np
import pytest

from .conftest import require_module

fe = require_module("fastmri.evaluate")
from fastmri.data import transforms as ft  # noqa: E402

from recon import metrics as M  # noqa: E402
from recon.evaluate import (  # noqa: E402
    EvaluationError,
    EvaluationWarning,
    discover_method_dirs,
    evaluate_dirs,
    parse_method_label,
)
from recon.evaluation.html import image_data_uri, png_data_uri  # noqa: E402

# file name -> target shape; file_b is taller than wide, so the fastMRI crop matters
TARGETS = {"file_a.h5": (3, 32, 32), "file_b.h5": (3, 36, 32)}


def _blobs(rng, shape):
    s, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    vol = np.zeros(shape)
    for i in range(s):
        for _ in range(5):
            cy, cx, sig = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 10)
            vol[i] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    return vol.astype(np.float32)


def _write_target(path, gt, key="reconstruction_rss", extra=None):
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=gt)
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=v)
        f.attrs["max"] = float(gt.max())
        f.attrs["acquisition"] = "CORPD_FBK"


def _write_pred(path, rec, std=None, **attrs):
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction", data=rec.astype(np.float32))
        if std is not None:
            f.create_dataset("reconstruction_std", data=std.astype(np.float32))
        for k, v in attrs.items():
            f.attrs[k] = v


@pytest.fixture
def data(tmp_path):
    """targets/, pred/zero-filled_R4 (no attrs) and pred/sense_R4 (attrs + std)."""
    rng = np.random.default_rng(0)
    tdir, pdir = tmp_path / "targets", tmp_path / "pred"
    zf, se = pdir / "zero-filled_R4", pdir / "sense_R4"
    for d in (tdir, zf, se):
        d.mkdir(parents=True)
    gts = {}
    for name, shape in TARGETS.items():
        gt = _blobs(rng, shape)
        gts[name] = gt
        _write_target(tdir / name, gt)
        noise = rng.standard_normal(shape)
        _write_pred(zf / name, gt + 0.08 * gt.max() * noise)
        _write_pred(se / name, gt + 0.03 * gt.max() * rng.standard_normal(shape),
                    std=np.full(shape, 0.03 * gt.max()), method="sense", acceleration=4)
    return {"tdir": tdir, "pdir": pdir, "zf": zf, "se": se, "gts": gts, "out": tmp_path / "out"}


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _load(path, key):
    with h5py.File(path, "r") as f:
        return f[key][()]


def _fastmri_pair(target, recons):
    t = ft.center_crop(target, (target.shape[-1], target.shape[-1]))
    return t, ft.center_crop(recons, (t.shape[-1], t.shape[-1]))


def test_metrics_outputs_match_fastmri(data):
    res = evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    out = data["out"]
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == 4 and {r["method"] for r in rows} == {"zero-filled", "sense"}
    assert all(r["acceleration"] == "4" and r["protocol"] == "fastmri" and r["slices"] == "3" for r in rows)
    assert {r["crop"] for r in rows} == {"32x32"}
    folders = {"zero-filled": data["zf"], "sense": data["se"]}
    stats = {m: fe.Metrics(fe.METRIC_FUNCS) for m in folders}
    for r in rows:
        target = _load(data["tdir"] / r["file"], "reconstruction_rss")
        recons = _load(folders[r["method"]] / r["file"], "reconstruction")
        t, p = _fastmri_pair(target, recons)
        stats[r["method"]].push(t, p)
        assert float(r["nmse"]) == pytest.approx(float(fe.nmse(t, p)), abs=1e-6, rel=1e-6)
        assert float(r["psnr"]) == pytest.approx(float(fe.psnr(t, p)), abs=1e-6)
        assert float(r["ssim"]) == pytest.approx(float(fe.ssim(t, p)[0]), abs=1e-6)
        ours = M.volume_metrics(*M.fastmri_crop(target, recons)[:2])
        for k in M.METRIC_NAMES:
            assert float(r[k]) == pytest.approx(ours[k], abs=1e-9, rel=1e-9)

    summary = json.loads((out / "metrics.json").read_text())
    assert summary == res.summary
    assert summary["protocol"] == "fastmri" and summary["reference_key"] == "reconstruction_rss"
    assert "W_t" in summary["crop"] and "target.max()" in summary["data_range_rule"]
    groups = {(g["method"], g["acceleration"]): g for g in summary["groups"]}
    assert set(groups) == {("zero-filled", 4), ("sense", 4)}
    for m, st in stats.items():
        g = groups[(m, 4)]
        assert g["n_volumes"] == 2 and g["n_invalid"] == 0
        for k, fk in (("nmse", "NMSE"), ("psnr", "PSNR"), ("ssim", "SSIM")):
            assert g[k]["mean"] == pytest.approx(float(np.squeeze(st.means()[fk])), abs=1e-6, rel=1e-6)
            assert g[k]["two_std"] == pytest.approx(2 * float(np.squeeze(st.stddevs()[fk])), abs=1e-6, rel=1e-6)

    slices = _read_csv(out / "metrics_slices.csv")
    assert len(slices) == 12
    for r in rows:
        mine = [float(s["ssim"]) for s in slices if s["method"] == r["method"] and s["file"] == r["file"]]
        assert np.mean(mine) == pytest.approx(float(r["ssim"]), abs=1e-9)


def test_report_is_self_contained(data):
    res = evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    html = (data["out"] / "report.html").read_text()
    assert res.paths["report"] == data["out"] / "report.html"
    assert "data:image/png;base64" in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    for text in ("zero-filled", "sense", "R=4", "fastMRI protocol", "reconstruction_rss", "W_t",
                 "data_range", "posterior std", "file_a.h5"):
        assert text in html, text
    assert html_lib.escape(res.summary["description"]) in html


def test_method_dict_and_single_folder(data):
    res = evaluate_dirs({"zf_R8": data["zf"]}, data["tdir"], data["out"])
    assert {(r["method"], r["acceleration"]) for r in res.volume_rows} == {("zf", 8)}
    res = evaluate_dirs(data["se"], data["tdir"], data["out"], overwrite=True, protocol="slice")
    assert {(r["method"], r["acceleration"]) for r in res.volume_rows} == {("sense", 4)}
    assert all(r["protocol"] == "slice" for r in _read_csv(data["out"] / "metrics.csv"))
    # slice protocol = mean of per-slice fastMRI scores
    gt = _load(data["tdir"] / "file_a.h5", "reconstruction_rss")
    pr = _load(data["se"] / "file_a.h5", "reconstruction")
    row = next(r for r in res.volume_rows if r["file"] == "file_a.h5")
    assert row["psnr"] == pytest.approx(np.mean([fe.psnr(gt[i:i + 1], pr[i:i + 1]) for i in range(3)]), abs=1e-6)
    assert [d.name for _, d in discover_method_dirs(data["pdir"])] == ["sense_R4", "zero-filled_R4"]
    assert parse_method_label("zero-filled_R4") == ("zero-filled", 4)
    assert parse_method_label("dps") == ("dps", None)


@pytest.mark.parametrize("bad_shape", [(3, 30, 30), (4, 32, 32)])
def test_shape_mismatch_names_file_and_shapes(data, bad_shape):
    _write_pred(data["zf"] / "file_a.h5", np.ones(bad_shape))
    with pytest.raises(EvaluationError) as ei:
        evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    msg = str(ei.value)
    assert "file_a.h5" in msg and str(bad_shape) in msg and "(3, 32, 32)" in msg
    assert not data["out"].exists()


def test_nan_raises_naming_file_and_slice(data):
    rec = _load(data["zf"] / "file_b.h5", "reconstruction")
    rec[2, 10, 10] = np.nan
    _write_pred(data["zf"] / "file_b.h5", rec)
    with pytest.raises(EvaluationError) as ei:
        evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    msg = str(ei.value)
    assert "file_b.h5" in msg and "slice" in msg and "[2]" in msg and "NaN" in msg


def test_allow_nan_marks_row_invalid(data):
    rec = _load(data["zf"] / "file_b.h5", "reconstruction")
    rec[0] = np.inf
    _write_pred(data["zf"] / "file_b.h5", rec)
    with pytest.warns(EvaluationWarning, match="file_b.h5"):
        res = evaluate_dirs(data["pdir"], data["tdir"], data["out"], allow_nan=True)
    rows = {(r["method"], r["file"]): r for r in _read_csv(data["out"] / "metrics.csv")}
    bad = rows[("zero-filled", "file_b.h5")]
    assert bad["valid"] == "false" and bad["psnr"] == "" and "NaN/Inf" in bad["note"]
    g = next(g for g in res.summary["groups"] if g["method"] == "zero-filled")
    assert g["n_volumes"] == 1 and g["n_invalid"] == 1
    assert g["psnr"]["mean"] == pytest.approx(float(rows[("zero-filled", "file_a.h5")]["psnr"]))
    assert g["psnr"]["two_std"] is None
    sl = [s for s in res.slice_rows if s["method"] == "zero-filled" and s["file"] == "file_b.h5"]
    assert [s["valid"] for s in sl] == [False] * 3 and "this slice" in sl[0]["note"]


def test_existing_outputs_refused_and_untouched(data):
    evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    before = {p.name: p.read_bytes() for p in data["out"].iterdir()}
    assert set(before) == {"metrics.csv", "metrics_slices.csv", "metrics.json", "report.html"}
    with pytest.raises(FileExistsError, match="metrics.csv"):
        evaluate_dirs(data["pdir"], data["tdir"], data["out"], protocol="slice")
    assert {p.name: p.read_bytes() for p in data["out"].iterdir()} == before
    evaluate_dirs(data["pdir"], data["tdir"], data["out"], protocol="slice", overwrite=True)
    assert (data["out"] / "metrics.csv").read_bytes() != before["metrics.csv"]
    assert sorted(p.name for p in data["out"].iterdir()) == sorted(before)  # no temp files left


def test_missing_target_named(data):
    (data["tdir"] / "file_b.h5").unlink()
    with pytest.raises(EvaluationError, match=r"no target for prediction .*file_b\.h5"):
        evaluate_dirs(data["pdir"], data["tdir"], data["out"])


def test_singlecoil_key_detected(tmp_path):
    rng = np.random.default_rng(1)
    gt = _blobs(rng, (2, 24, 24))
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    _write_target(tmp_path / "t" / "x.h5", gt, key="reconstruction_esc",
                  extra={"reconstruction_rss": 5 * gt})
    _write_pred(tmp_path / "p" / "x.h5", gt + 0.01, method="unet", acceleration=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "o")
    assert res.summary["reference_key"] == "reconstruction_esc"
    assert res.volume_rows[0]["psnr"] == pytest.approx(float(fe.psnr(gt, gt + 0.01)), abs=1e-6)
    res = evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "o", target_key="reconstruction_rss",
                        overwrite=True)
    assert res.summary["reference_key"] == "reconstruction_rss"


def test_image_helpers():
    uri = image_data_uri(np.eye(8), 0, 1, "gray")
    assert uri.startswith("data:image/png;base64,")
    assert png_data_uri(b"\x89PNG").startswith("data:image/png;base64,")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    assert png_data_uri(fig).startswith("data:image/png;base64,iVBOR")


def test_report_has_one_panel_per_acceleration_with_its_mask(data, tmp_path):
    """Methods at 4x and 8x: per acceleration the best, median and worst slice by PSNR, each with the sampling
    mask its files recorded in a row of its own."""
    name = sorted(TARGETS)[0]
    gt = data["gts"][name]
    W = gt.shape[-1]
    masks = {4: np.zeros(W, bool), 8: np.zeros(W, bool)}
    masks[4][::4] = True
    masks[8][::8] = True
    pdir = tmp_path / "p2"
    for R in (4, 8):
        (pdir / f"sense_R{R}").mkdir(parents=True)
        _write_pred(pdir / f"sense_R{R}" / name, gt * (1 - 0.01 * R), method="sense", acceleration=R)
        with h5py.File(pdir / f"sense_R{R}" / name, "a") as f:
            f["mask"] = masks[R]
    evaluate_dirs(pdir, data["tdir"], tmp_path / "e2", allow_missing=True)
    html = (tmp_path / "e2" / "report.html").read_text()
    assert html.count("<figure>") == 6 and f"{name} slice" in html and html.count(">sampling mask</th>") == 6
    for R in (4, 8):
        n = int(masks[R].sum())
        assert f"sampling mask: {n} of {W} k-space columns" in html
        for what in ("best", "median", "worst"):
            assert f"R = {R}, {what} slice by PSNR" in html


def test_report_shows_a_2d_mask_as_an_image(data, tmp_path):
    name = sorted(TARGETS)[0]
    gt = data["gts"][name]
    (tmp_path / "p3" / "sense_R4").mkdir(parents=True)
    _write_pred(tmp_path / "p3" / "sense_R4" / name, gt, method="sense", acceleration=4)
    m2 = np.zeros((10, 12), bool)
    m2[::2, ::3] = True
    with h5py.File(tmp_path / "p3" / "sense_R4" / name, "a") as f:
        f["mask"] = m2
    evaluate_dirs(tmp_path / "p3", data["tdir"], tmp_path / "e3", allow_missing=True)
    html = (tmp_path / "e3" / "report.html").read_text()
    assert f"sampling mask: {int(m2.sum())} of 120 k-space samples (10 x 12)" in html


def test_each_file_is_read_once(data, monkeypatch):
    """Scoring, calibration and the panels share one read of each target and of each prediction file (two
    methods share each target); the panels then read back only the single slices they show."""
    import recon.evaluation.panels as panels
    import recon.evaluation.run as run

    reads = []
    real_target, real_pred, real_slice = run.read_target, run.read_prediction, panels.read_slice
    monkeypatch.setattr(run, "read_target", lambda p, k: reads.append(("target", p.name)) or real_target(p, k))
    monkeypatch.setattr(run, "read_prediction",
                        lambda it: reads.append((it.path.parent.name, it.path.name)) or real_pred(it))
    slices = []
    monkeypatch.setattr(panels, "read_slice", lambda p, key, i: slices.append(i) or real_slice(p, key, i))
    evaluate_dirs(data["pdir"], data["tdir"], data["out"])
    assert len(reads) == len(set(reads)) == 2 + 4  # 2 targets, 2 methods x 2 files
    assert slices and all(isinstance(i, int) for i in slices)


def test_target_key_preference_agrees_with_read_target(tmp_path):
    """One preference for the reference dataset (the fastMRI convention): a file holding both (single-coil) is
    scored on ESC, by evaluate and by data_prep.fastmri_h5.read_target alike; a multi-coil file has only RSS."""
    from data_prep.fastmri_h5 import read_target
    from recon.evaluation.load import read_target as eval_read_target

    gt = np.ones((2, 8, 8), np.float32)
    _write_target(tmp_path / "sc.h5", gt, key="reconstruction_rss", extra={"reconstruction_esc": 2 * gt})
    _write_target(tmp_path / "mc.h5", gt, key="reconstruction_rss")
    assert read_target(tmp_path / "sc.h5")[1] == eval_read_target(tmp_path / "sc.h5", None).key == "reconstruction_esc"
    assert read_target(tmp_path / "mc.h5")[1] == eval_read_target(tmp_path / "mc.h5", None).key == "reconstruction_rss"
