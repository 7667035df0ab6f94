"""benchmarks/table.py --quick: every row present, numbers equal fastmri.evaluate on the written files, and the
Markdown section is replaced in place (the rest of the file kept)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from .test_simulate import _nifti

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_table(tmp_path):
    from fastmri.evaluate import psnr

    from data_prep.simulate import SimConfig, simulate

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import table

    src = _nifti(tmp_path / "v.nii.gz", shape=(44, 52, 40))
    data = tmp_path / "sim"
    simulate(src, data, SimConfig(matrix=48, coils=4, slice_step=1, chunk=3, gap=1, lowres=0), overwrite=True)
    md = tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n\n## Other section\nkept\n")
    args = ["--quick", "--data", str(data), "--prior", "gsure_r4=builtin", "--accelerations", "4",
            "--out", str(tmp_path / "out"), "--markdown", str(md), "--pair", "sense:zero-filled"]
    rows, real = table.main(args)
    assert real is None
    methods = ["zero-filled", "sense", "l1-wavelet", "diffusion-gsure_r4"]
    assert sorted(m for m, _ in rows) == sorted(methods)
    assert rows[("diffusion-gsure_r4", 4.0)]["calls"] > 0 and rows[("zero-filled", 4.0)]["calls"] == 0
    # The zero-filled PSNR in the table is the fastMRI-protocol mean over volumes, recomputed here.
    vals = []
    for f in sorted((tmp_path / "out" / "recon" / "zero-filled_R4").glob("*.h5")):
        with h5py.File(f) as h, h5py.File(data / "multicoil_test" / f.name) as t:
            rec = h["reconstruction"][()]
            gt = t["reconstruction_rss"][: rec.shape[0]]
        vals.append(psnr(gt, rec, maxval=gt.max()))
    assert rows[("zero-filled", 4.0)]["psnr"]["mean"] == pytest.approx(float(np.mean(vals)), abs=1e-6)
    # Paired per-slice differences: recomputed here slice by slice with fastMRI's psnr (volume max as range).
    import paired

    a = paired.per_slice(tmp_path / "out" / "recon" / "sense_R4", data / "multicoil_test")
    b = paired.per_slice(tmp_path / "out" / "recon" / "zero-filled_R4", data / "multicoil_test")
    diffs = []
    for (stem, i), m in a.items():
        with h5py.File(tmp_path / "out" / "recon" / "sense_R4" / f"{stem}.h5") as h, \
                h5py.File(data / "multicoil_test" / f"{stem}.h5") as t:
            rec = h["reconstruction"][()]
            gt = t["reconstruction_rss"][: rec.shape[0]]
        assert m["psnr"] == pytest.approx(psnr(gt[i:i + 1], rec[i:i + 1], maxval=gt.max()), abs=1e-6)
        diffs.append(m["psnr"] - b[(stem, i)]["psnr"])
    res = paired.paired(a, b, "psnr")
    assert res["slice"][0] == pytest.approx(float(np.mean(diffs)), abs=1e-9) and res["slices"] == len(diffs)
    lo, hi = res["slice"][1:]
    assert lo < res["slice"][0] < hi or len(diffs) < 2
    text = md.read_text()
    assert "| sense - zero-filled | 4 |" in text
    assert text.count("<!-- benchmark-table:begin -->") == 1 and "## Other section\nkept" in text
    assert "Reconstructions made at commit(s)" in text and "unrecorded" not in text
    for m in methods:
        assert re.search(rf"\| {re.escape(m)} \| 4 \| -?\d+\.\d\d", text), m
    # Running again replaces the section rather than adding a second one (finished methods are reused).
    table.main(args)
    text2 = md.read_text()
    assert text2.count("<!-- benchmark-table:begin -->") == 1 and "## Other section\nkept" in text2


def test_write_section_keeps_the_rest(tmp_path):
    import table

    md = tmp_path / "B.md"
    table.write_section(md, "## T\none")
    md.write_text(md.read_text() + "\n## After\nkept\n")
    table.write_section(md, "## T\ntwo")
    text = md.read_text()
    assert text.startswith("<!-- benchmark-table:begin -->\n## T\ntwo\n<!-- benchmark-table:end -->\n\n## After\nkept")
