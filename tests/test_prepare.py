"""Prepared training sets: masks, normalisation, maps, noise level, targets kept apart, resume, errors."""

import hashlib
import json
import shutil
import warnings
from dataclasses import asdict

import h5py
import numpy as np
import pytest
import torch

import data_prep.prep_slice as slice_mod
import data_prep.shards as shards_mod
from data_prep.fastmri_h5 import DataError
from data_prep.prepare import PrepConfig, prepare, prepare_config_from_args
from mri_diffusion.data import PreparedDataset, collate
from mri_diffusion.physics.masks import RandomMask, make_sampler, seed_from
from mri_diffusion.physics.normalize import acs_scale
from mri_diffusion.physics.sense import Sense
from mri_diffusion.types import MRIBatch

from .conftest import write_multicoil

NOISE = 0.05  # write_multicoil: std per real channel -> CN std NOISE * sqrt(2)
H, W, C = 72, 64, 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    files = [write_multicoil(d / "vol_a.h5", noise=NOISE, seed=0), write_multicoil(d / "vol_b.h5", noise=NOISE, seed=10)]
    cfg = PrepConfig(shard_size=4)
    manifest = prepare(files, d / "out", cfg, progress=False)
    return d / "out", manifest, cfg, files


def _read(path, key):
    with h5py.File(path, "r") as f:
        return f[key][()]


def _small(d, name, **kw):
    """Single-coil-in-a-multicoil-file volumes: maps are 1, so preparation is fast."""
    kw.setdefault("coils", 1)
    kw.setdefault("noise", NOISE)
    return write_multicoil(d / name, **kw)


# -- manifest and shards --------------------------------------------------------------------------------
def test_manifest_fields(prepared):
    out, m, cfg, files = prepared
    assert json.loads((out / "manifest.json").read_text()) == m
    assert not (out / "manifest.partial.json").exists()
    assert m["format_version"] == 1 and m["mri_diffusion_version"] and m["created"]
    assert [s["file"] for s in m["sources"]] == ["vol_a.h5", "vol_b.h5"]
    assert m["sources"][0]["num_slices"] == 3 and m["sources"][0]["shape"] == [C, H, W]
    assert m["config"] == asdict(cfg) and len(m["config_hash"]) == 64
    assert (m["image_shape"], m["num_coils"], m["num_slices"]) == ([H, W], C, 6)
    assert [s["num_slices"] for s in m["shards"]] == [3, 3] and m["has_targets"] and m["skipped"] == []  # one file each
    for s in m["shards"]:
        assert hashlib.sha256((out / "shards" / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert "99th percentile of the ACS-only RSS image" in m["scale_rule"] and "MAD" in m["noise_rule"]


def test_shard_contents(prepared):
    out, m, _, _ = prepared
    with h5py.File(out / "shards" / "shard_00000.h5", "r") as f:
        expect = {"kspace": ((3, C, H, W), np.complex64), "maps": ((3, C, H, W), np.complex64),
                  "mask": ((3, 1, 1, W), np.float32), "density": ((3, 1, 1, W), np.float32),
                  "noise_std": ((3,), np.float32), "scale": ((3,), np.float32)}
        for key, (shape, dtype) in expect.items():
            assert f[key].shape == shape and f[key].dtype == dtype, key
        assert [i.decode() for i in f["ids"][()]] == ["vol_a.h5:0", "vol_a.h5:1", "vol_a.h5:2"]
        assert "target" not in f
    with h5py.File(out / "targets" / "shard_00001.h5", "r") as f:
        assert f["target"].shape == (3, H, W) and f["target"].dtype == np.complex64
        assert f["rss"].shape == (3, H, W) and f["rss"].dtype == np.float32


def test_masks_per_slice_seeded_and_kspace_masked(prepared):
    out, _, _, _ = prepared
    ds = PreparedDataset(out)
    sampler = make_sampler("random", 4.0)
    masks = []
    for item in ds:
        name, i = item["id"].split(":")
        ref = sampler.sample((H, W), seed=seed_from(name, int(i), 0))
        assert torch.equal(item["mask"], ref)  # reproducible from (file, slice, seed)
        off = item["kspace"] * (1 - item["mask"])
        assert torch.count_nonzero(off) == 0  # zeros off the mask
        assert torch.allclose(item["density"], RandomMask(4.0).density((H, W)))
        masks.append(item["mask"])
    assert len({tuple(m.reshape(-1).tolist()) for m in masks}) > 1  # a different mask per slice


def test_scale_and_normalisation_match_recon(prepared):
    out, _, _, files = prepared
    ds = PreparedDataset(out)
    raw = _read(files[0], "kspace")
    for j in range(3):
        item = ds[j]
        assert item["scale"] > 0
        assert acs_scale(item["kspace"], item["mask"]) == pytest.approx(1.0, rel=1e-4)  # ACS p99 ~ 1
        k = torch.from_numpy(raw[j]) * item["mask"] + 0.0
        assert float(item["scale"]) == pytest.approx(acs_scale(k, item["mask"]), rel=1e-5)  # recon's rule


def test_estimated_noise_std(prepared):
    out, m, _, _ = prepared
    assert all(s["noise_source"] == "estimated" for s in m["sources"])
    ds = PreparedDataset(out)
    for item in ds:
        true = NOISE * np.sqrt(2) / float(item["scale"])
        assert abs(float(item["noise_std"]) / true - 1) < 0.3


def test_dataset_collate_and_workers(prepared):
    out, _, _, _ = prepared
    ds = PreparedDataset(out)
    assert len(ds) == 6 and ds.image_shape == (H, W) and ds.num_coils == C and ds.manifest["num_slices"] == 6
    item = ds[5]
    assert item["kspace"].shape == (C, H, W) and item["kspace"].dtype == torch.complex64
    assert item["mask"].shape == (1, 1, W) and item["noise_std"].shape == () and item["id"] == "vol_b.h5:2"
    assert "target" not in item
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2,
                                         multiprocessing_context="fork")
    batches = list(loader)
    b = batches[0]
    assert isinstance(b, MRIBatch) and b.batch_size == 4 and b.target is None
    assert b.kspace.shape == (4, C, H, W) and b.maps.shape == (4, C, H, W)
    assert b.mask.shape == b.density.shape == (4, 1, 1, W) and b.noise_std.shape == b.scale.shape == (4,)
    assert b.ids == ("vol_a.h5:0", "vol_a.h5:1", "vol_a.h5:2", "vol_b.h5:0")
    assert torch.equal(batches[1].kspace[1], item["kspace"])


def test_targets_consistent_with_measurements(prepared):
    out, _, _, files = prepared
    ds = PreparedDataset(out, with_targets=True)
    rss_file = _read(files[1], "reconstruction_rss")
    for j in (0, 4):
        it = ds[j]
        assert it["target"].shape == (H, W) and it["target"].dtype == torch.complex64
        A = Sense(it["maps"][None], it["mask"][None])
        resid = (A(it["target"][None])[0] - it["kspace"]) * it["mask"]
        rms = float(torch.sqrt(torch.sum(torch.abs(resid) ** 2) / (C * H * it["mask"].sum())))
        assert rms < 1.5 * NOISE * np.sqrt(2) / float(it["scale"])  # A S^H y = y up to noise
    rss = _read(out / "targets" / "shard_00001.h5", "rss")[1] * float(ds[4]["scale"])  # shard 1 = vol_b
    assert ds[4]["id"] == "vol_b.h5:1"
    assert np.allclose(rss, rss_file[1], rtol=1e-4, atol=1e-6)  # reconstruction_rss in normalised units
    batch = collate([ds[0], ds[1]])
    assert batch.target.shape == (2, H, W) and batch.without_target().target is None


def test_deleting_targets_leaves_the_rest_identical(prepared, tmp_path):
    out, _, _, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "targets")
    a, b = PreparedDataset(out), PreparedDataset(copy)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys() and x["id"] == y["id"]
        for key in ("kspace", "mask", "density", "maps", "noise_std", "scale"):
            assert torch.equal(x[key], y[key]), key
    with pytest.raises(FileNotFoundError, match="targets/shard_00000.h5"):
        PreparedDataset(copy, with_targets=True)


# -- errors on loading ----------------------------------------------------------------------------------
def test_dataset_validation_errors(prepared, tmp_path):
    out, _, _, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "shards" / "shard_00001.h5").unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.h5"):
        PreparedDataset(copy)
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="different format version 99; re-run mridiff prep"):
        PreparedDataset(copy)
    with pytest.raises(FileNotFoundError, match="manifest"):
        PreparedDataset(tmp_path)


# -- resume / overwrite ---------------------------------------------------------------------------------
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    files = [_small(tmp_path, "a.h5", seed=1), _small(tmp_path, "b.h5", seed=2)]
    cfg = PrepConfig(shard_size=2)
    ref = prepare(files, tmp_path / "ref", cfg, progress=False)
    assert [s["ids"] for s in ref["shards"]] == [["a.h5:0", "a.h5:1"], ["a.h5:2"], ["b.h5:0", "b.h5:1"], ["b.h5:2"]]

    real_slice = slice_mod._prepare_slice
    calls = {"slice": 0}

    def interrupted(*a, **k):  # Ctrl-C while the second shard is being written
        calls["slice"] += 1
        if calls["slice"] == 3:
            raise KeyboardInterrupt
        return real_slice(*a, **k)

    monkeypatch.setattr(slice_mod, "_prepare_slice", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(files, out, cfg, progress=False)
    assert not (out / "manifest.json").exists()
    partial = json.loads((out / "manifest.partial.json").read_text())
    assert [s["name"] for s in partial["shards"]] == ["shard_00000.h5"] and partial["tasks_done"] == 1
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_00000.h5"]  # no half-written shard
    before = (out / "shards" / "shard_00000.h5").stat().st_mtime_ns

    with pytest.raises(ValueError, match="different configuration"):
        prepare(files, out, PrepConfig(shard_size=2, seed=5), progress=False)

    def counting_slice(*a, **k):
        calls["slice"] += 1
        return real_slice(*a, **k)

    calls["slice"] = 0
    monkeypatch.setattr(slice_mod, "_prepare_slice", counting_slice)
    final = prepare(files, out, cfg, progress=False)
    assert calls["slice"] == 4  # the two slices of the finished shard were not redone
    assert (out / "shards" / "shard_00000.h5").stat().st_mtime_ns == before
    assert [s["sha256"] for s in final["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert [s["sha256"] for s in final["target_shards"]] == [s["sha256"] for s in ref["target_shards"]]
    assert final["config_hash"] == ref["config_hash"] and not (out / "manifest.partial.json").exists()

    with pytest.raises(FileExistsError, match="manifest.json"):
        prepare(files, out, cfg, progress=False)
    other = prepare(files, out, PrepConfig(shard_size=4, seed=5), overwrite=True, progress=False)
    assert [s["name"] for s in other["shards"]] == ["shard_00000.h5", "shard_00001.h5"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_00000.h5", "shard_00001.h5"]
    m_ref, m_other = _read(tmp_path / "ref" / "shards" / "shard_00000.h5", "mask"), _read(out / "shards" / "shard_00000.h5", "mask")
    assert not np.array_equal(m_ref[:2], m_other[:2])  # another seed, other masks


# -- inputs ---------------------------------------------------------------------------------------------
def test_file_mask_wins_and_no_targets(tmp_path):
    file_mask = RandomMask(4.0).sample((H, W), seed=3).reshape(-1).numpy()
    files = [_small(tmp_path, "full.h5", seed=1), _small(tmp_path, "under.h5", seed=2, mask=file_mask)]
    with pytest.warns(UserWarning, match="no targets kept"):
        m = prepare(files, tmp_path / "out", PrepConfig(), progress=False)
    assert not m["has_targets"] and not (tmp_path / "out" / "targets").exists()
    assert [s["mask_source"] for s in m["sources"]] == ["retrospective", "file"]
    ds = PreparedDataset(tmp_path / "out")
    for j in (3, 4, 5):
        assert np.array_equal(ds[j]["mask"].reshape(-1).numpy(), file_mask)
        assert torch.allclose(ds[j]["density"], RandomMask(4.0).density((H, W)))  # the configured sampler
    with pytest.raises(ValueError, match="no fully sampled targets"):
        PreparedDataset(tmp_path / "out", with_targets=True)


def test_mixed_readout_extents_cropped_by_default_refused_by_a_larger_matrix(tmp_path):
    """Files of different matrices share one training matrix (default: the smallest readout extent, the largest
    width); a --matrix one file cannot reach refuses the run naming the file, its rows and the matrix."""
    mask = RandomMask(4.0).sample((64, W), seed=3).reshape(-1).numpy()
    files = [_small(tmp_path, "a.h5"), _small(tmp_path, "b.h5", h=64, mask=mask)]
    with pytest.warns(UserWarning, match="no targets kept"):
        m = prepare(files, tmp_path / "ok", PrepConfig(), progress=False)
    assert m["image_shape"] == [64, W] and m["geometry"]["matrix_source"] == "headers"
    assert [s["geometry"]["readout"] for s in m["sources"]] == ["image-domain crop 72 -> 64", "kept"]
    with pytest.raises(DataError, match=r"1 file\(s\) \(3 slices\) cannot be brought to the training matrix "
                                        r"72x64[\s\S]*b\.h5: readout field of view holds 64 rows, the training "
                                        r"matrix needs 72"):
        prepare(files, tmp_path / "out", PrepConfig(matrix=(72, W)), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_zero_slice_skipped_and_nan_refused(tmp_path):
    f = _small(tmp_path, "z.h5", seed=4)
    with h5py.File(f, "r+") as h:
        h["kspace"][1] = 0
    with pytest.warns(UserWarning, match="slice 1 is all zero"):
        m = prepare([f], tmp_path / "out", PrepConfig(), progress=False)
    assert m["num_slices"] == 2 and m["skipped"] == [{"id": "z.h5:1", "reason": "all-zero"}]
    assert [i for s in m["shards"] for i in s["ids"]] == ["z.h5:0", "z.h5:2"]
    with h5py.File(f, "r+") as h:
        k = h["kspace"][2]
        k[0, 3, 3] = np.nan
        h["kspace"][2] = k
    with pytest.raises(DataError, match=r"z\.h5.*slice 2.*NaN"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare([f], tmp_path / "out2", PrepConfig(), progress=False)


def test_given_noise_std_and_config_helper(tmp_path):
    f = _small(tmp_path, "n.h5", seed=5, slices=2)
    cfg = prepare_config_from_args(noise_std=0.07, acceleration=8, center_fraction=None, max_slices_per_file=1)
    assert cfg.acceleration == 8.0 and cfg.center_fraction is None and cfg.mask_type == "random"
    m = prepare([f], tmp_path / "out", cfg, progress=False)
    assert m["num_slices"] == 1 and m["sources"][0]["noise_source"] == "config"
    it = PreparedDataset(tmp_path / "out")[0]
    assert float(it["noise_std"]) == pytest.approx(0.07 / float(it["scale"]), rel=1e-5)
    with pytest.raises(TypeError, match="unknown prep option"):
        prepare_config_from_args(bogus=1)
    with pytest.raises(ValueError, match="lowres:FRACTION"):
        PrepConfig(view="lowres")
    with pytest.raises(ValueError, match="unknown mask type"):
        PrepConfig(mask_type="spiral")
