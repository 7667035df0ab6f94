"""Complex image volumes (h5, the SIAT layout) -> fastMRI multi-coil files: phase kept, closed-form k-space
crop, noise level, fixed split by volume, refusal of bad input, the CLI, and the real SIAT file when present."""

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep.fastmri_h5 import DataError
from data_prep.simulate import coil_maps
from data_prep.simulate_h5 import ComplexSimConfig, parse_ids, simulate_h5

from .conftest import REAL, fft2c_np, ifft2c_np, phantom

SPLITS = {"train": [0, 1], "val": [2], "test": [3]}


def _source(path: Path, vols: int = 4, per: int = 2, h: int = 20, w: int = 16, **override) -> Path:
    """A tiny file with the SIAT layout: image (vols * per, h, w) complex64 with a smooth phase, volume int16."""
    image = np.stack([phantom(h, w, seed=i) for i in range(vols * per)])
    data = {"image": image, "volume": (np.arange(vols * per) // per).astype(np.int16), **override}
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return path


def _read(path: Path):
    with h5py.File(path) as f:
        return f["kspace"][()], f["reconstruction_rss"][()], dict(f.attrs)


def test_phase_kept_and_noise_level(tmp_path):
    src = _source(tmp_path / "s.h5")
    cfg = ComplexSimConfig(coils=4, snr_db=30.0)
    s = simulate_h5(src, tmp_path / "o", cfg, SPLITS, progress=False)
    k, rss, attrs = _read(tmp_path / "o" / "multicoil_train" / "s_vol001.h5")
    with h5py.File(src) as f:
        x = f["image"][2:4]  # volume 1
    maps = coil_maps(4, (20, 16))
    combined = (maps.conj()[None] * ifft2c_np(k)).sum(1)  # S^H F^H y; sum_c |S_c|^2 = 1
    sigma = attrs["noise_std"]
    err = combined - x
    assert np.std(err) == pytest.approx(sigma, rel=0.15)  # only the added noise: the phase is the image's own
    assert abs(np.mean(err)) < 3 * sigma / np.sqrt(err.size)
    fg = np.abs(x) > 0.1 * np.abs(x).max()
    assert 20 * np.log10(np.abs(x[fg]).mean() / sigma) == pytest.approx(30.0, abs=1e-3)  # SNR definition
    assert np.allclose(rss, np.sqrt((np.abs(ifft2c_np(k)) ** 2).sum(1)), rtol=1e-4, atol=1e-9)
    assert attrs["volume"] == 1 and attrs["split"] == "train" and list(attrs["source_slices"]) == [2, 3]
    assert s["noise_std"]["1"] == sigma


def test_kspace_centre_crop_is_the_closed_form(tmp_path):
    src = _source(tmp_path / "s.h5", h=21, w=16)
    cfg = ComplexSimConfig(coils=3, snr_db=40.0, image_crop=(19, 16), matrix=(10, 8))
    simulate_h5(src, tmp_path / "o", cfg, SPLITS, progress=False)
    k, rss, attrs = _read(tmp_path / "o" / "multicoil_test" / "s_vol003.h5")
    assert k.shape == (2, 3, 10, 8) and rss.shape == (2, 10, 8) and k.dtype == np.complex64
    with h5py.File(src) as f:
        x = f["image"][6:8, 1:20, :]  # image-domain centre crop 21 -> 19 rows
    full = fft2c_np(coil_maps(3, (19, 16))[None] * x[:, None])  # (S, C, 19, 16)
    expected = full[..., 19 // 2 - 5:19 // 2 + 5, 8 - 4:8 + 4]  # fftshift-centred block, no rescaling
    resid = k - expected
    assert np.std(resid) == pytest.approx(attrs["noise_std"], rel=0.2)  # what is left is the added noise only
    assert np.abs(expected).max() > 30 * attrs["noise_std"]  # ... and a misplaced crop would not pass
    # the SNR is defined at the written matrix: mean foreground of the noise-free RSS over sigma
    clean_rss = np.sqrt((np.abs(ifft2c_np(expected)) ** 2).sum(1))
    fg = clean_rss[clean_rss > 0.1 * clean_rss.max()]
    assert 20 * np.log10(fg.mean() / attrs["noise_std"]) == pytest.approx(40.0, abs=1e-3)


def test_split_recorded_and_loadable(tmp_path):
    import fastmri.data

    simulate_h5(_source(tmp_path / "s.h5"), tmp_path / "o", ComplexSimConfig(coils=2), SPLITS, progress=False)
    split = json.loads((tmp_path / "o" / "split.json").read_text())
    assert split["by_volume"] == SPLITS and split["unused_volumes"] == [] and len(split["source_sha256"]) == 64
    seen = {}
    for name in ("train", "val", "test"):
        for p in sorted((tmp_path / "o" / f"multicoil_{name}").glob("*.h5")):
            _, _, attrs = _read(p)
            assert attrs["split"] == name and json.loads(attrs["split_json"]) == SPLITS
            assert attrs["volume"] not in seen  # no volume in two splits
            seen[attrs["volume"]] = name
            assert p.name in split["files"][name]
    assert seen == {0: "train", 1: "train", 2: "val", 3: "test"}
    ds = fastmri.data.SliceDataset(tmp_path / "o" / "multicoil_test", challenge="multicoil")
    kspace, _, target, attrs, fname, _ = ds[0]
    assert kspace.shape == (2, 20, 16) and target.shape == (20, 16) and attrs["recon_size"] == (20, 16, 1)
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_h5(tmp_path / "s.h5", tmp_path / "o", ComplexSimConfig(coils=2), SPLITS, progress=False)
    with pytest.raises(FileExistsError, match="another split"):  # vol 2 would land in train and stay in val
        simulate_h5(tmp_path / "s.h5", tmp_path / "o", ComplexSimConfig(coils=2),
                    {"train": [0, 1, 2], "test": [3]}, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="volume 1 is in two splits"):
        simulate_h5(tmp_path / "s.h5", tmp_path / "p", splits={"train": [0, 1], "val": [1]}, progress=False)
    with pytest.raises(ValueError, match=r"volume\(s\) \[7\]"):
        simulate_h5(tmp_path / "s.h5", tmp_path / "p", splits={"train": [0], "test": [7]}, progress=False)
    assert parse_ids("0-2, 5") == [0, 1, 2, 5] and parse_ids("") == []
    with pytest.raises(ValueError, match="volume ids"):
        parse_ids("3-1")


@pytest.mark.parametrize("override, match", [
    ({"image": None}, "missing dataset 'image'"),
    ({"volume": None}, "missing dataset 'volume'"),
    ({"image": np.ones((8, 20, 16), np.float32)}, r"'image' must be .*complex.*float32 shape \(8, 20, 16\)"),
    ({"image": np.ones((8, 320), np.complex64)}, r"'image' must be .*shape \(8, 320\)"),
    ({"volume": np.zeros(7, np.int16)}, r"'volume' must be \(N,\) = \(8,\).*shape \(7,\)"),
    ({"volume": np.zeros(8, np.float32)}, "'volume' must hold integer ids, got dtype float32"),
])
def test_bad_sources_are_named(tmp_path, override, match):
    src = _source(tmp_path / "bad.h5", **override)
    with pytest.raises(DataError, match=match) as e:
        simulate_h5(src, tmp_path / "o", splits=SPLITS, progress=False)
    assert "bad.h5" in str(e.value)
    assert not (tmp_path / "o").exists()  # nothing written


def test_bad_values_and_options(tmp_path):
    image = np.stack([phantom(20, 16, seed=i) for i in range(8)])
    image[5, 3, 3] = np.nan
    src = _source(tmp_path / "nan.h5", image=image)
    with pytest.raises(DataError, match=r"nan.h5: 'image' slice 5 \(volume 2\) holds NaN"):
        simulate_h5(src, tmp_path / "o", ComplexSimConfig(coils=2), SPLITS, progress=False)
    with pytest.raises(ValueError, match="matrix .* 32x16 must fit inside 20x16"):
        simulate_h5(_source(tmp_path / "s.h5"), tmp_path / "p", ComplexSimConfig(matrix=(32, 16)), SPLITS)


def test_cli(tmp_path):
    from click.testing import CliRunner

    from mri_diffusion.cli import main

    src = _source(tmp_path / "s.h5")
    args = ["simulate", "--source", str(src), "--out", str(tmp_path / "o"), "--coils", "2", "--matrix", "10x8",
            "--split-train", "0-1", "--split-val", "2", "--split-test", "3"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "train 2 files/4 slices" in r.output and _read(tmp_path / "o/multicoil_val/s_vol002.h5")[0].shape == (2, 2, 10, 8)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "pass --overwrite" in r.output
    r = CliRunner().invoke(main, [*args[:5], "--chunk", "3"])
    assert r.exit_code == 2 and "--chunk does not apply to h5" in r.output


def test_real_siat_file(tmp_path):
    src = REAL / "siat_t2_brain" / "siat_t2_brain_200.h5"
    if not src.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data missing on CI: {src}")
        pytest.skip(f"real data not available: {src}")
    t = time.perf_counter()
    cfg = ComplexSimConfig(coils=2, image_crop=(256, 256), matrix=(64, 64))
    s = simulate_h5(src, tmp_path / "o", cfg, {"train": [0], "val": [14], "test": [19]}, progress=False)
    assert s["unused_volumes"] == [v for v in range(20) if v not in (0, 14, 19)]
    assert s["source_sha256"].startswith("047e1f45f7d7e238")  # SOURCES.md section 9
    k, rss, attrs = _read(tmp_path / "o" / "multicoil_test" / "siat_t2_brain_200_vol019.h5")
    assert k.shape == (10, 2, 64, 64) and list(attrs["source_slices"]) == list(range(190, 200))
    with h5py.File(src) as f:
        x = f["image"][190:200, 7:263, :]
    low = ifft2c_np(fft2c_np(x)[..., 96:160, 96:160])  # the 64^2 k-space centre of the 256^2 image
    combined = (coil_maps(2, (64, 64)).conj()[None] * ifft2c_np(k)).sum(1)
    fg = np.abs(low) > 0.2 * np.abs(low).max()
    # maps applied at 256^2 before the k-space crop: equal up to noise and the maps' own band limit
    assert np.linalg.norm((combined - low)[fg]) < 0.05 * np.linalg.norm(low[fg])
    assert time.perf_counter() - t < 20
