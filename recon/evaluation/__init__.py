"""Evaluation: fastMRI-format reconstructions against fastMRI targets -> metrics (CSV/JSON) and an HTML report.

One job per module, in the order :func:`evaluate_dirs` (``run``) composes them:

- ``pairs``: find the pairs (method folders, method and acceleration of each prediction file, the target of the
  same name, missing pairs named or recorded);
- ``load``: load each file once (target volume; reconstruction, std, mask and attrs of each prediction);
- ``score``: the metrics of one pair (``recon.metrics``) and the pixels of the posterior-std calibration;
- ``summary``: mean and 2 std per method and acceleration, the calibration table, the protocol, CSV text;
- ``panels``: the best / median / worst slices shown in the report;
- ``report`` and ``html``: the self-contained HTML report, and the same summary as plain text.
"""

from data_prep.fastmri_h5 import TARGET_KEYS

from .load import detect_target_key
from .pairs import EvaluationError, EvaluationWarning, discover_method_dirs, parse_method_label
from .report import summary_text, write_report
from .run import OUTPUT_FILES, EvaluationResult, evaluate_dirs
from .summary import SLICE_COLUMNS, VOLUME_COLUMNS, protocol_description, summarize

__all__ = [
    "EvaluationError", "EvaluationWarning", "EvaluationResult", "OUTPUT_FILES", "TARGET_KEYS", "VOLUME_COLUMNS",
    "SLICE_COLUMNS", "parse_method_label", "discover_method_dirs", "detect_target_key", "protocol_description",
    "summarize", "evaluate_dirs", "summary_text", "write_report",
]
