"""``recon.evaluate``: the evaluation API under its historical name (``evaluate_dirs`` and its types); the code is
the package :mod:`recon.evaluation`."""

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
