"""The out-of-distribution score of a slice under a prior, from the denoiser's residual statistics (issue 20).

A denoiser trained on a distribution removes from an image what it considers noise. Add Gaussian noise of level
sigma to an image x and denoise it; the normalised change

    s(x) = E_n ||D(x + sigma n, sigma) - x||^2 / (2 N sigma^2)        (n complex with N(0, 1) parts, N pixels)

is the share of the added noise energy that D's output misses by, plus what D removes from x itself. For a
Gaussian prior x ~ CN(0, 2 a^2 I) and its exact denoiser D(u) = a^2 / (a^2 + sigma^2) u, the expectation over x
is a^2 / (a^2 + sigma^2) (tests/test_ood.py); an image with structure the prior does not know (another contrast,
another body part, another noise texture, a blank field of noise) is changed more, and s grows.

The score is computed on the slice's CG-SENSE reconstruction (prior-free, all measured lines), in the
normalised units every prior is trained in, at one level ``sigma`` (0.05, with sigma_data 0.5) and ``draws``
seeded noise draws. It is compared with the median of the same score on the prior's own validation slices
(``OODReference``, made once per prior by ``mridiff ood-reference`` and kept next to the checkpoint as
``<checkpoint>.ood.json``): ``score_ratio`` = s / median. A slice is flagged when the ratio exceeds a factor
(``GuardOptions.flag_score``, 2 by default, set a priori). The test is one-sided: a smoother image than the
training set (a smaller change) is not flagged.

Why this score and level: on the benchmark's validation sets (BENCHMARKS.md, "Unseen anatomy") the held-out-line
rules (``recon.guard``) flagged 22-35 % of the matched slices, because 4-6 held-out lines per slice decide them;
this score uses the whole image. sigma 0.05 separated the validation sets best among 0.02-0.8.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mri_diffusion.atomic import atomic_write_text

SIGMA = 0.05
DRAWS = 4
SUFFIX = ".ood.json"


def denoiser_change(denoiser, x: torch.Tensor, seeds: list[int], sigma: float = SIGMA,
                    draws: int = DRAWS) -> torch.Tensor:
    """s(x) of the module doc for images ``x`` (B, H, W) complex, one seed per image: (B,) float64."""
    if x.ndim != 3 or not x.is_complex() or len(seeds) != x.shape[0]:
        raise ValueError(f"expected (B, H, W) complex images and B seeds, got {tuple(x.shape)}, {len(seeds)} seeds")
    noise = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s) % 2**63)
        re, im = (torch.randn((draws, *x.shape[1:]), generator=g, dtype=torch.float32) for _ in range(2))
        noise.append(torch.complex(re, im).to(x.device))
    xs = x.repeat_interleave(draws, 0)
    sig = torch.full((xs.shape[0],), float(sigma), device=x.device)
    with torch.no_grad():
        d = denoiser(xs + sigma * torch.cat(noise), sig)
    e = ((d - xs).abs() ** 2).sum((-2, -1)).double().reshape(x.shape[0], draws).mean(1)
    return e / (2 * x.shape[-2] * x.shape[-1] * sigma ** 2)


def slice_score(denoiser, sense: torch.Tensor, ctx: dict) -> float:
    """The score of one slice from its CG-SENSE image (H, W), seeded by (file, slice) as every caller does."""
    from .samplers.common import derive_seed

    return float(denoiser_change(denoiser, sense[None], [derive_seed(ctx["file"], ctx["slice"], "ood")])[0])


@dataclass(frozen=True)
class OODReference:
    """The score's level on slices like the prior's training set: its ``median`` over ``slices`` validation
    slices (``accelerations`` and ``mask`` of their CG-SENSE reconstructions), at ``sigma`` with ``draws``."""

    median: float
    slices: int
    sigma: float
    draws: int
    accelerations: list
    mask: str
    data: str
    checkpoint: str
    prior_step: int
    scores: list  # every validation slice's score, for the record

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "OODReference":
        try:
            raw = json.loads(Path(path).read_text())
            ref = cls(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not an OOD reference ({e})") from None
        if not (ref.median > 0 and math.isfinite(ref.median)):
            raise ValueError(f"{path}: 'median' must be a positive number, got {ref.median}")
        return ref


def sidecar(checkpoint: str | Path) -> Path:
    """Where the reference of a checkpoint (a path or a shipped name such as ``builtin``) is kept."""
    from mri_diffusion.train.checkpoint import resolve_checkpoint

    p = resolve_checkpoint(checkpoint)
    return p.with_name(p.name + SUFFIX) if p.suffix != ".pt" else p.with_suffix(SUFFIX)


def find_reference(checkpoint: str | Path) -> OODReference | None:
    """The checkpoint's sidecar reference, or None when it has none."""
    p = sidecar(checkpoint)
    return OODReference.load(p) if p.exists() else None


class ScoreProbe:
    """A ``SliceMethod`` that writes the CG-SENSE reconstruction and puts the slice's score in its info."""

    uses_noise_std = True

    def __init__(self, denoiser, sense_iters: int = 30, sense_lambda: float = 1e-2):
        self.denoiser, self.sense_iters, self.sense_lambda = denoiser, sense_iters, sense_lambda

    def __call__(self, k, mask, maps, ctx):
        from . import baselines
        from .pipeline import SliceResult

        x = baselines.cg_sense(k, mask, maps, iters=self.sense_iters, lam=self.sense_lambda)
        return SliceResult(x, {}, info={"ood_score": slice_score(self.denoiser, x, ctx)})


def build_reference(checkpoint: str, folder: str | Path, accelerations: list[float], mask: str = "random",
                    device: torch.device = torch.device("cpu"), max_slices: int | None = None,
                    progress: bool = True) -> OODReference:
    """Score every slice of the fastMRI files in ``folder`` (validation volumes of the prior's own data) at each
    acceleration, with the masks ``mridiff recon`` would draw, and keep the median."""
    from data_prep.fastmri_h5 import list_h5, open_volume

    from .diffusion import DEFAULT_VIRTUAL_COILS, load_prior
    from .pipeline import MaskSpec, reconstruct_volume

    net, _, ck = load_prior(checkpoint, device)
    probe = ScoreProbe(net)
    files = list_h5(folder)
    if not files:
        raise ValueError(f"{folder}: no .h5 files to build the reference from")
    scores = []
    for R in accelerations:
        for f in files:
            res = reconstruct_volume(open_volume(f), probe, MaskSpec(mask, R), device, max_slices=max_slices,
                                     progress=progress, virtual_coils=DEFAULT_VIRTUAL_COILS)
            scores += [i["ood_score"] for i in res.get("slice_info", []) if i is not None]
    if not scores or not all(math.isfinite(s) for s in scores):
        raise ValueError(f"{folder}: no finite scores ({len(scores)} slices)")
    t = torch.tensor(scores, dtype=torch.float64)
    return OODReference(median=float(t.median()), slices=len(scores), sigma=SIGMA, draws=DRAWS,
                        accelerations=[float(r) for r in accelerations], mask=mask, data=str(folder),
                        checkpoint=str(checkpoint), prior_step=int(ck["step"]), scores=[round(s, 6) for s in scores])
