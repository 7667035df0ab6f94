"""fastMRI h5 reading/validation/writing, BART cfl, and every bad input of the foundation issue."""

import h5py
import numpy as np
import pytest

from mri_diffusion.atomic import atomic_write
from data_prep.fastmri_h5 import (DataError, list_h5, open_volume, read_cfl, read_kspace_slice, read_target,
                                  write_reconstruction)
from data_prep.ismrmrd import make_header, parse_header

from .conftest import real_path, write_multicoil


def test_reads_multicoil_file(mc_file):
    vol = open_volume(mc_file, expect="multicoil")
    assert (vol.num_slices, vol.num_coils, vol.shape, vol.multicoil) == (3, 4, (72, 64), True)
    assert vol.target_key == "reconstruction_rss" and vol.recon_size == (72, 64)
    k = read_kspace_slice(vol, 1)
    assert k.shape == (4, 72, 64) and k.dtype == np.complex64


def test_header_round_trip_and_missing_element():
    info = parse_header(make_header((640, 368), (320, 320), (280.0, 161.4), 4.5, 15))
    assert info.encoding_size == (640, 368, 1) and info.recon_size == (320, 320, 1)
    assert (info.padding_left, info.padding_right) == (0, 368)
    bad = make_header((64, 64), (64, 64), (200.0, 200.0), 3.0, 4).replace(b"<center>32</center>", b"")
    with pytest.raises(KeyError, match="kspace_encoding_step_1/center"):
        parse_header(bad, where="f.h5")


def test_real_files_load(tmp_path):
    mc = open_volume(real_path("fastmri_format", "multicoil", "espirit_brain8ch.h5"), expect="multicoil")
    assert (mc.num_coils, mc.shape) == (8, (230, 180))
    sc = open_volume(real_path("fastmri_format", "singlecoil", "loraks_t2_brain.h5"), expect="singlecoil")
    assert sc.num_coils == 1 and read_kspace_slice(sc, 0).shape == (1, 256, 340)
    with pytest.raises(DataError, match="expected multi-coil"):
        open_volume(sc.path, expect="multicoil")
    with pytest.raises(DataError, match="expected single-coil"):
        open_volume(mc.path, expect="singlecoil")


def test_read_bart_cfl_matches_shared_h5():
    k = read_cfl(real_path("espirit_brain8ch", "full.cfl"))
    assert k.shape == (1, 230, 180, 8) and k.dtype == np.complex64
    with h5py.File(real_path("fastmri_format", "multicoil", "espirit_brain8ch.h5")) as f:
        ref = f["kspace"][0]
    assert np.allclose(np.moveaxis(k[0], -1, 0), ref)


def test_missing_path_and_non_hdf5(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_volume(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=r"junk.h5: cannot open as HDF5"):
        open_volume(junk)


def test_truncated_file_is_named(mc_file):
    data = mc_file.read_bytes()
    mc_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_volume(mc_file)


def test_folder_mode_skips_bad_files_with_warning(tmp_path, mc_file):
    (mc_file.parent / "broken.h5").write_bytes(b"\x00" * 100)
    (mc_file.parent / "README.txt").write_text("hi")
    with pytest.warns(UserWarning, match="broken.h5"):
        files = list_h5(mc_file.parent)
    assert [f.name for f in files] == ["vol_a.h5"]
    with pytest.raises(DataError):
        list_h5(mc_file.parent / "broken.h5")


def _file(tmp_path, **datasets):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return p


def test_missing_kspace_real_kspace_and_bad_mask(tmp_path):
    with pytest.raises(DataError, match="missing dataset 'kspace'"):
        open_volume(_file(tmp_path, reconstruction_rss=np.zeros((1, 4, 4), np.float32)))
    with pytest.raises(DataError, match="must be complex, got dtype float32"):
        open_volume(_file(tmp_path, kspace=np.zeros((1, 2, 8, 8), np.float32)))
    with pytest.raises(DataError, match=r"'mask' shape \(7,\) does not match k-space width 8"):
        open_volume(_file(tmp_path, kspace=np.zeros((1, 2, 8, 8), np.complex64), mask=np.ones(7)))


def test_nan_slice_refused_naming_file_and_slice(tmp_path):
    k = np.ones((2, 2, 8, 8), np.complex64)
    k[1, 0, 3, 3] = np.nan
    vol = open_volume(_file(tmp_path, kspace=k))
    read_kspace_slice(vol, 0)
    with pytest.raises(DataError, match=r"x.h5: 'kspace' slice 1 contains 1 NaN/Inf"):
        read_kspace_slice(vol, 1)


def test_complex128_is_accepted_and_cast(tmp_path):
    vol = open_volume(_file(tmp_path, kspace=np.ones((1, 2, 6, 5), np.complex128)))
    assert read_kspace_slice(vol, 0).dtype == np.complex64


def test_odd_sizes_without_header(tmp_path):
    vol = open_volume(_file(tmp_path, kspace=np.ones((1, 3, 41, 37), np.complex64)))
    assert vol.header is None and vol.recon_size == (41, 37)


def test_write_reconstruction_atomic_and_no_overwrite(tmp_path):
    out = tmp_path / "out" / "file1.h5"
    write_reconstruction(out, np.ones((2, 5, 5)), attrs={"method": "sense"})
    with h5py.File(out) as f:
        assert f["reconstruction"].dtype == np.float32 and f["reconstruction"].shape == (2, 5, 5)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_reconstruction(out, np.zeros((2, 5, 5)))
    assert out.read_bytes() == before
    with pytest.raises(DataError, match="NaN"):
        write_reconstruction(tmp_path / "nan.h5", np.full((1, 3, 3), np.nan))
    assert not (tmp_path / "nan.h5").exists()


def test_crash_during_write_leaves_nothing(tmp_path):
    target = tmp_path / "r.h5"
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]


def test_read_target_missing(tmp_path):
    p = write_multicoil(tmp_path / "t.h5", mask=np.ones(64))
    with pytest.raises(DataError, match="no ground truth"):
        read_target(p)
