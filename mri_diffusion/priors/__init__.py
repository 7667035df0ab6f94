"""Priors shipped with the package (EMA weights only; each file holds its config, training step and data hash).

``builtin`` (``builtin.pt``): the real-anatomy GSURE prior of ``configs/train/siat_gsure_r4_cpu.yaml``, trained
without clean images (exact GSURE) on 4x-undersampled, noisy 8-coil 128 x 128 k-space simulated from the 14
training volumes of the SIAT T2 brain set (research use only).
``builtin-colin27`` (``colin27_gsure_cg.pt``): the earlier built-in prior, GSURE with 10 CG iterations (the biased
estimator) on one simulated Colin27 T1 head; kept as the deliberately mismatched test and benchmark fixture.
"""

from pathlib import Path

_HERE = Path(__file__).parent
SHIPPED = {"builtin": _HERE / "builtin.pt", "builtin-colin27": _HERE / "colin27_gsure_cg.pt"}
ABOUT = {"builtin": "exact GSURE (no clean image) on 14 real SIAT T2 brain volumes, 8 simulated coils, 128 x 128, 4x",
         "builtin-colin27": "GSURE with 10 CG iterations (biased) on one simulated Colin27 T1 head (mismatched fixture)"}
BUILTIN = SHIPPED["builtin"]
