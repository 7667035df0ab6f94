"""Gather the fastMRI knee images of ``../shared/data/real/scoremri_fastmri_knee_images`` (SOURCES.md section 7)
into one complex-image h5 that ``mridiff simulate --source`` reads: 'image' (4, 320, 320) complex64 and 'volume'
(4,), each image its own volume: the complex single-coil image (its own phase) and the three retrospective
magnitudes (zero phase). Used by the unseen-anatomy benchmark (``benchmarks/guard.py``, BENCHMARKS.md):

    python benchmarks/knee_images.py --out runs/knee4.h5
    mridiff simulate --source runs/knee4.h5 --out runs/knee128 --matrix 128x128 --coils 8 --snr-db 30 \
        --split-train '' --split-val '' --split-test 0-3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

NAMES = ["single-coil_001", "real_retrospective_001", "real_retrospective_002", "real_retrospective_003"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real/scoremri_fastmri_knee_images")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    images = np.stack([np.load(a.src / f"{n}.npy").astype(np.complex64) for n in NAMES])
    if a.out.exists():
        raise SystemExit(f"{a.out} exists; not overwritten")
    tmp = a.out.with_suffix(".tmp")
    with h5py.File(tmp, "w") as h:
        h["image"] = images
        h["volume"] = np.arange(len(NAMES), dtype=np.int16)
        h.attrs["source"] = f"{a.src}: {', '.join(NAMES)}"
    tmp.rename(a.out)
    print(f"wrote {a.out}: {images.shape}")


if __name__ == "__main__":
    main()
