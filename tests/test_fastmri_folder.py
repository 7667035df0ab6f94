"""A folder of fastMRI-like files of mixed geometry -> one training set (issue 19).

Readout oversampling removed as fastMRI crops its images, mixed widths and coil counts in one set with the manifest
recording what was done, refused files named (exit 1 unless skipped), workers=2 bit-identical to one worker,
resume, prewhitening with a noise scan, a training batch mixing original widths, and the mock files loading in
fastMRI's own SliceDataset and transforms.
"""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import data_prep.prepare as prep_mod
from data_prep.fastmri_h5 import DataError, open_volume
from data_prep.geometry import FilePlan, plan_file
from data_prep.mock_fastmri import MockConfig, mock_folder, phantom, write_mock_file
from data_prep.prepare import PrepConfig, prepare
from mri_diffusion.cli import main
from mri_diffusion.data import PreparedDataset, collate
from mri_diffusion.physics.fft import ifft2c

from .conftest import require_module

pytestmark = pytest.mark.usefixtures("one_thread")

RECON = (48, 48)
# widths and coil counts cycle together: file 0 is 56 wide with 4 coils (the training width, no compression)
MOCK = MockConfig(recon=RECON, widths=(56, 48, 52), coils=(4, 6, 8), snr_db=30.0)
CFG = PrepConfig(acceleration=4.0, center_fraction=0.16, virtual_coils=4, shard_size=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    mock_folder(d / "raw", MOCK, files=3, slices=3)
    return d


@pytest.fixture(scope="module")
def mixed(folder):
    return folder / "set", prepare([folder / "raw"], folder / "set", CFG, progress=False)


def _sha(m):
    return [s["sha256"] for s in m["shards"]] + [s["sha256"] for s in m["target_shards"]]


def test_readout_oversampling_removal_equals_fastmris_image_crop(folder):
    fastmri = require_module("fastmri")
    from fastmri.data import transforms as T

    path = folder / "raw" / "mock_001.h5"
    vol = open_volume(path)
    with h5py.File(path, "r") as f:
        k = np.asarray(f["kspace"][1])
        target = np.asarray(f["reconstruction_rss"][1])
    C, H, W = k.shape
    assert (H, W) == (96, 48) and vol.header.recon_size[:2] == RECON
    plan = plan_file(vol, (48, 48), None)
    ours = ifft2c(plan.apply(torch.from_numpy(k)))
    theirs = T.complex_center_crop(fastmri.ifft2c(T.to_tensor(k)), (48, W))
    assert ours.shape == (C, 48, W)
    assert torch.allclose(torch.view_as_real(ours), theirs, atol=1e-5 * float(theirs.abs().max()))
    rss = fastmri.rss(fastmri.complex_abs(theirs), dim=0)
    assert torch.allclose(rss, torch.from_numpy(target), rtol=1e-4, atol=1e-6)  # the file's reconstruction_rss
    # the phase encode in k-space: measured columns kept exactly, padded ones zero
    wide = FilePlan((H, W), (48, 56), 48).apply(torch.from_numpy(k))
    narrow = plan.apply(torch.from_numpy(k))
    assert torch.equal(wide[..., 4:52], narrow) and not wide[..., :4].any() and not wide[..., 52:].any()
    assert torch.equal(FilePlan((H, W), (48, 40), 48).apply(torch.from_numpy(k)), narrow[..., 4:44])


def test_mock_loads_in_fastmri_slicedataset_and_transforms(folder):
    require_module("fastmri")
    from fastmri.data import SliceDataset, transforms as T
    from fastmri.data.subsample import RandomMaskFunc

    raw = folder / "raw"
    ds = SliceDataset(raw, transform=None, challenge="multicoil")
    assert len(ds) == 9
    kspace, mask, target, attrs, fname, _ = ds[4]
    assert fname == "mock_001.h5" and kspace.shape == (6, 96, 48) and target.shape == RECON and mask is None
    assert attrs["encoding_size"] == (96, 48, 1) and attrs["recon_size"] == (*RECON, 1)
    assert (attrs["padding_left"], attrs["padding_right"]) == (0, 48) and attrs["acquisition"] == "AXT2"
    assert {"max", "norm", "patient_id"} <= set(attrs)
    # fully sampled through fastMRI's U-Net transform: its RSS of the recon-size crop is the file's target
    s = SliceDataset(raw, transform=T.UnetDataTransform("multicoil"), challenge="multicoil")[4]
    assert s.image.shape == RECON and torch.allclose(s.image * s.std + s.mean, s.target * s.std + s.mean,
                                                     rtol=1e-4, atol=1e-5 * float(s.max_value))
    v = SliceDataset(raw, transform=T.VarNetDataTransform(mask_func=RandomMaskFunc([0.08], [4], seed=0)),
                     challenge="multicoil")[8]
    assert v.masked_kspace.shape == (8, 96, 52, 2) and v.crop_size == RECON and v.target.shape == RECON


def test_mixed_folder_gives_one_set_and_the_manifest_says_what_was_done(mixed, folder):
    out, m = mixed
    assert m["image_shape"] == [48, 56] and m["num_coils"] == 4 and m["num_slices"] == 9
    assert m["geometry"]["matrix_source"] == "headers" and m["refused"] == []
    g = [s["geometry"] for s in m["sources"]]
    assert [s["shape"] for s in m["sources"]] == [[4, 96, 56], [6, 96, 48], [8, 96, 52]]
    assert all(x["readout"] == "oversampling removed: image-domain crop 96 -> 48 (reconSpace x)" for x in g)
    assert [x["phase_encode"] for x in g] == ["kept", "k-space zero-pad 48 -> 56 (8 unmeasured columns, mask 0)",
                                              "k-space zero-pad 52 -> 56 (4 unmeasured columns, mask 0)"]
    assert [x["coils"] for x in g] == ["4 kept", "6 -> 4 virtual (SVD)", "8 -> 4 virtual (SVD)"]
    assert g[1]["readout_oversampling"] == 2.0 and g[1]["pe_scale"] == pytest.approx(56 / 48, abs=1e-6)
    assert m["disk"]["prepared_over_raw"] <= 2.0 and m["run"]["workers"] == 1
    ds = PreparedDataset(out, with_targets=True)
    for j in (0, 4, 8):  # one slice of each file
        it = ds[j]
        pad = {0: 0, 4: 4, 8: 2}[j]
        mask, dens = it["mask"].reshape(-1), it["density"].reshape(-1)
        if pad:
            assert not mask[:pad].any() and not mask[-pad:].any() and not dens[:pad].any() and not dens[-pad:].any()
        assert dens[pad:56 - pad].min() > 0 and torch.count_nonzero(it["kspace"] * (1 - it["mask"])) == 0
    # file 0 (training width, 4 coils: nothing but the readout crop): RSS target = fastMRI's reconstruction_rss
    with h5py.File(folder / "raw" / "mock_000.h5", "r") as f:
        ref = f["reconstruction_rss"][0]
    with h5py.File(out / "targets" / "shard_00000.h5", "r") as f:
        rss = f["rss"][0] * float(ds[0]["scale"])
    assert np.allclose(rss[:, 4:52], ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_shard_compression_is_lossless(mixed, folder, tmp_path):
    """Worker-side gzip of the masked k-space (written as raw HDF5 chunks) reads back bit for bit, smaller."""
    out, m = mixed
    plain = prepare([folder / "raw"], tmp_path / "plain", replace(CFG, compress=False), progress=False)
    a, b = PreparedDataset(out), PreparedDataset(tmp_path / "plain")
    for j in range(len(a)):
        assert torch.equal(a[j]["kspace"], b[j]["kspace"]) and torch.equal(a[j]["maps"], b[j]["maps"])
    assert m["disk"]["bytes"] < plain["disk"]["bytes"]
    with h5py.File(out / "shards" / "shard_00000.h5", "r") as f:
        assert f["kspace"].compression == "gzip" and f["kspace"].shuffle and f["kspace"].chunks == (1, 4, 48, 56)


def test_refused_files_are_named_and_the_run_exits_1_unless_skipped(folder, tmp_path):
    write_mock_file(tmp_path / "raw" / "two_coils.h5", np.stack([phantom(RECON, 5)]), 52, 2, MOCK)
    for p in (folder / "raw").glob("*.h5"):
        (tmp_path / "raw" / p.name).symlink_to(p)
    args = ["prep", str(tmp_path / "raw"), "--out", str(tmp_path / "set"), "-R", "4", "--center-fraction", "0.16",
            "--virtual-coils", "4", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "two_coils.h5: 2 coil(s), fewer than the 4 virtual coils" in r.output, r.output
    assert not (tmp_path / "set" / "manifest.json").exists()
    r = CliRunner().invoke(main, [*args, "--matrix", "64x56"])  # readout: 48 rows after oversampling removal
    assert r.exit_code == 1 and "4 file(s) (10 slices)" in r.output and "holds 48 rows after removing the readout " \
        "oversampling (96 rows), the training matrix needs 64" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "--skip-refused"])
    assert r.exit_code == 0, r.output
    assert "refused: two_coils.h5 (1 slices): 2 coil(s)" in r.output and "slices/s" in r.output
    m = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert m["refused"] == [{"file": "two_coils.h5", "slices": 1, "reason": "2 coil(s), fewer than the 4 virtual "
                                                                          "coils of the set"}]
    assert m["num_slices"] == 9 and "two_coils.h5" not in {s["file"] for s in m["sources"]}
    with pytest.raises(DataError, match=r"different coil counts \(2, 4, 6, 8"):
        prepare([tmp_path / "raw"], tmp_path / "x", PrepConfig(), progress=False)


def test_two_workers_bit_identical_to_one_and_resume(mixed, folder, tmp_path, monkeypatch):
    _, ref = mixed
    two = prepare([folder / "raw"], tmp_path / "two", CFG, progress=False, workers=2)
    assert _sha(two) == _sha(ref) and two["run"]["workers"] == 2
    strip = lambda m: {k: v for k, v in m.items() if k not in ("created", "run")}  # noqa: E731
    assert strip(two) == strip(ref)
    real, calls = prep_mod._record, {"n": 0}

    def failing(*a, **k):  # Ctrl-C in the parent after the first shard was recorded
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prep_mod, "_record", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare([folder / "raw"], tmp_path / "res", CFG, progress=False, workers=2)
    part = json.loads((tmp_path / "res" / "manifest.partial.json").read_text())
    assert [s["name"] for s in part["shards"]] == ["shard_00000.h5"] and part["tasks_done"] == 1
    monkeypatch.setattr(prep_mod, "_record", real)
    resumed = prepare([folder / "raw"], tmp_path / "res", CFG, progress=False, workers=2)
    assert resumed["run"]["slices_this_run"] == 6 and _sha(resumed) == _sha(ref)  # 9 slices, 3 were done


def test_noise_scan_prewhitens_the_coils(tmp_path):
    cfg = MockConfig(recon=RECON, widths=(48,), coils=(6,), coil_correlation=0.8, noise_scan=True, snr_db=0.0)
    write_mock_file(tmp_path / "raw" / "n.h5", np.stack([phantom(RECON, s) for s in range(2)]), 48, 6, cfg)
    pc = PrepConfig(acceleration=2.0, center_fraction=0.16)
    white = prepare([tmp_path / "raw"], tmp_path / "w", pc, progress=False)
    plain = prepare([tmp_path / "raw"], tmp_path / "p", PrepConfig(acceleration=2.0, center_fraction=0.16,
                                                                   prewhiten=False), progress=False)
    assert white["sources"][0]["noise_source"] == "noise scan (prewhitened)"
    assert plain["sources"][0]["noise_source"] == "estimated"

    def edge(it):  # the outer 8 readout rows at each edge, sampled columns: noise-dominated at 0 dB
        k = torch.cat([it["kspace"][:, :8], it["kspace"][:, -8:]], dim=1)
        return k[:, :, it["mask"].reshape(-1) > 0].reshape(6, -1)

    def coil_corr(root):
        it = PreparedDataset(root)[0]
        k = edge(it)
        cov = (k @ k.conj().T / k.shape[1]).abs()
        d = torch.sqrt(torch.diagonal(cov))
        corr = cov / d[:, None] / d[None]
        return float((corr - torch.eye(6)).abs().sum() / 30), it  # mean |correlation| between coils

    c_white, it = coil_corr(tmp_path / "w")
    c_plain, _ = coil_corr(tmp_path / "p")
    assert float(it["noise_std"]) == pytest.approx(1.0 / float(it["scale"]), rel=1e-6)
    assert c_white < 0.12 and c_plain > 0.2
    per_coil = edge(it).abs().pow(2).mean(dim=1).sqrt()
    assert torch.allclose(per_coil * float(it["scale"]), torch.ones(6), rtol=0.25)  # CN(0, 1) per entry


def test_training_batch_mixes_original_widths(mixed, tmp_path):
    from mri_diffusion.config import TrainConfig
    from mri_diffusion.train.loop import train

    out, _ = mixed
    ds = PreparedDataset(out)
    b = collate([ds[0], ds[3], ds[7]])  # original widths 56, 48, 52
    assert b.kspace.shape == (3, 4, 48, 56) and b.maps.shape == (3, 4, 48, 56) and b.mask.shape == (3, 1, 1, 56)
    supports = [int((d.reshape(-1) > 0).sum()) for d in b.density]
    assert supports == [56, 48, 52]
    cfg = TrainConfig.from_yaml("configs/train/tiny.yaml")
    d = cfg.to_dict()
    d["train"]["steps"] = 2
    res = train(TrainConfig.from_dict(d), out, tmp_path / "run", progress=False, tensorboard=False)
    assert res["step"] == 2 and all(np.isfinite(res["losses"]))


def test_torchrun_ddp_trains_on_the_mixed_set(mixed, tmp_path):
    """The existing DDP path (torchrun, gloo, 2 processes) on a set of mixed original geometry."""
    import os
    import subprocess
    import sys

    from mri_diffusion.train import load_checkpoint

    out, _ = mixed
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           "-m", "mri_diffusion.cli", "train", "--config", "configs/train/tiny.yaml", "--data", str(out), "--out",
           str(tmp_path / "ddp"), "--set", "train.steps=2", "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["step"] == 2 and ck["data"]["image_shape"] == [48, 56]


def _square(x):
    return x * x


def test_workers_stream_with_a_bounded_window():
    """ordered_map keeps results in task order and never pulls more than `window` tasks ahead of the consumer:
    memory does not grow with the number of files."""
    from data_prep.parallel import ordered_map

    pulled = []

    def tasks():
        for t in range(20):
            pulled.append(t)
            yield t

    got = []
    for r in ordered_map(_square, tasks(), workers=2, window=3):
        assert len(pulled) - len(got) <= 3 + 1  # in flight + the result being handed over
        got.append(r)
    assert got == [t * t for t in range(20)]
    assert list(ordered_map(_square, range(5), workers=1)) == [0, 1, 4, 9, 16]


def test_a_files_own_mask_keeps_its_measured_lines_through_the_width_change(tmp_path):
    """An undersampled file (its own 1-D mask) zero-padded 48 -> 56 in k-space: its mask is the file's, shifted by 4,
    zero on the padded columns; every measured column holds the file's data (readout crop only), nothing else."""
    from mri_diffusion.physics.masks import RandomMask

    mask = RandomMask(4.0, 0.16).sample((96, 48), seed=1).reshape(-1).numpy()
    raw = tmp_path / "raw"
    write_mock_file(raw / "under.h5", np.stack([phantom(RECON, 7)]), 48, 4, MOCK, mask=mask)
    write_mock_file(raw / "wide.h5", np.stack([phantom(RECON, 8)]), 56, 4, MOCK, mask=RandomMask(4.0, 0.16).sample(
        (96, 56), seed=2).reshape(-1).numpy())
    m = prepare([raw], tmp_path / "set", PrepConfig(acceleration=4.0, center_fraction=0.16), progress=False)
    assert m["image_shape"] == [48, 56] and m["sources"][0]["mask_source"] == "file"
    it = PreparedDataset(tmp_path / "set")[0]
    assert it["id"] == "under.h5:0"
    got = it["mask"].reshape(-1).numpy()
    assert np.array_equal(got[4:52], mask) and not got[:4].any() and not got[52:].any()
    with h5py.File(raw / "under.h5", "r") as f:
        k = torch.from_numpy(f["kspace"][0])
    ref = FilePlan((96, 48), (48, 48), 48).apply(k) / float(it["scale"])
    cols = torch.from_numpy(mask > 0)
    assert torch.allclose(it["kspace"][..., 4:52][..., cols], ref[..., cols], rtol=1e-5, atol=1e-6 * ref.abs().max())
    assert not it["kspace"][..., 4:52][..., ~cols].any() and not it["kspace"][..., :4].any()
