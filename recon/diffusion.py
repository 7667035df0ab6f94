"""Posterior-sampling reconstruction of one slice with a learned prior D(x, sigma).

K posterior samples per slice run as one batch, and ``batch`` runs several slices x K samples at once
(``mridiff recon --batch-slices``); each sample's noise is seeded by (file, slice, sample index, seed), so
results do not depend on batching. Outputs: the posterior mean (its magnitude is the
reconstruction), the posterior standard deviation sqrt(E|x - mean|^2) (``reconstruction_std``), and
optionally the sample magnitudes (``reconstruction_samples``, (K, H, W) per slice). With one sample there is
no std: nothing is written for it (``mridiff recon`` says so).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep.fastmri_h5 import DataError
from mri_diffusion.physics import Sense

from .pipeline import SliceResult
from .samplers.common import NoiseSource, canonical_sampler, default_sigmas, derive_seed, get_sampler, network_calls


_SIGNATURE = {"noise", "noise_std", "callback"}  # every sampler's shared keywords, not options
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def sampler_defaults(sampler: str) -> dict:
    """Every option of sampler ``sampler`` (the keyword parameters of its ``sample``) with its default."""
    params = inspect.signature(get_sampler(sampler)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _SIGNATURE}


def parse_sampler_options(sampler: str, raw: dict[str, str]) -> dict:
    """``{key: text}`` from ``--sampler-option key=value`` -> typed values, checked against the sampler's own
    keyword parameters (type from the default, else the annotation). ValueError naming the key otherwise;
    booleans are true/false/yes/no/1/0 and nothing else."""
    params = {p.name: p for p in inspect.signature(get_sampler(sampler)).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.name not in _SIGNATURE}
    out = {}
    for key, text in raw.items():
        if key not in params:
            raise ValueError(f"{key!r} is not an option of sampler {sampler!r}; valid: {', '.join(sorted(params))}")
        p, t = params[key], text.strip().lower()
        ann = str(p.annotation)
        kind = type(p.default) if p.default is not None else (int if ann.startswith("int") else float)
        if p.default is None and t in ("none", "null"):
            out[key] = None
        elif kind is bool:
            if t not in _BOOLS:
                raise ValueError(f"{key}={text!r}: expected true/false (or yes/no, 1/0)")
            out[key] = _BOOLS[t]
        else:
            try:
                v = kind(text)
            except ValueError:
                raise ValueError(f"{key}={text!r}: expected {'an integer' if kind is int else 'a number'}"
                                 + (" or none" if p.default is None else "")) from None
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{key}={text!r}: expected a finite number")
            out[key] = v
    return out


# Scans with more coils are SVD-compressed to this many virtual coils before posterior sampling by default
# (mridiff recon --virtual-coils auto, the benchmark table): 15 coils x 320^2 spent 51 % of the sampler's time
# outside the network with all coils, 21 % with 8 virtual coils, for -0.10 dB (BENCHMARKS.md, Speed).
DEFAULT_VIRTUAL_COILS = 8

# The 10-call dds recipe (BENCHMARKS.md, Few-step sampling; chosen on SIAT validation volumes): keyword arguments
# of DiffusionRecon, e.g. DiffusionRecon(net, samples=4, **FEW_STEP); `mridiff recon --steps 10 --sigma-max 1
# --sigma-min 0.03 --sampler-option eta=1.0`.
FEW_STEP = {"sampler": "dds", "steps": 10, "sigma_max": 1.0, "sigma_min": 0.03, "options": {"eta": 1.0}}


@dataclass
class DiffusionRecon:
    """A ``SliceMethod`` running sampler ``sampler`` with ``steps`` noise levels and ``samples`` draws."""

    denoiser: torch.nn.Module
    sampler: str = "dds"
    steps: int | None = None
    samples: int = 4
    seed: int = 0
    save_samples: bool = False
    options: dict = field(default_factory=dict)
    sigma_max: float | None = None  # schedule overrides (None: the sampler's default, ``default_sigmas``)
    sigma_min: float | None = None
    rho: float | None = None
    uses_noise_std = True  # the samplers weigh the data by the noise level: the pipeline conditions it

    def __post_init__(self):
        if self.samples < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError(f"samples ({self.samples}) and steps ({self.steps}) must be >= 1")
        self.sampler = canonical_sampler(self.sampler)  # 'cg' -> 'dds'
        self.options = dict(self.options)  # never shares a caller's dict (e.g. FEW_STEP's)
        self.sigmas = default_sigmas(self.sampler, self.steps, self.sigma_min, self.sigma_max, self.rho)
        self.fn = get_sampler(self.sampler)

    @property
    def all_options(self) -> dict:
        """Every sampler option as used: the given ones over the sampler's defaults."""
        return {**sampler_defaults(self.sampler), **self.options}

    @property
    def sigmas_attr(self) -> str:
        """The noise levels as written to the outputs' ``sigmas`` attr (JSON list)."""
        return json.dumps([round(float(v), 6) for v in self.sigmas])

    @property
    def calls_per_sample(self) -> int:
        return network_calls(self.sampler, len(self.sigmas) - 1, **self.options)

    def describe(self, checkpoint, cfg, ck: dict) -> tuple[dict, dict, str]:
        """(settings for the resume fingerprint, output attrs, one line for the terminal)."""
        steps, opts = len(self.sigmas) - 1, self.all_options
        settings = {"checkpoint": str(checkpoint), "prior_step": int(ck["step"]), "prior_config": cfg.hash(),
                    "sampler": self.sampler, "steps": steps, "samples": self.samples, "seed": self.seed,
                    "save_samples": self.save_samples, "sampler_options": opts}
        if (self.sigma_max, self.sigma_min, self.rho) != (None, None, None):  # old fingerprints stay valid
            settings["schedule"] = {"sigma_max": self.sigma_max, "sigma_min": self.sigma_min, "rho": self.rho}
        attrs = {"checkpoint": str(checkpoint), "prior": cfg.name, "sampler": self.sampler, "samples": self.samples,
                 "steps": steps, "sampler_options": json.dumps(opts), "network_calls_per_sample": self.calls_per_sample,
                 "sigmas": self.sigmas_attr}
        what = (f"sampler {self.sampler}, {steps} steps (sigma {float(self.sigmas[0]):g} -> {float(self.sigmas[-2]):g}), "
                f"{self.samples} sample(s) per slice"
                + (" (one sample: no reconstruction_std is written)" if self.samples == 1 else "")
                + f", options {', '.join(f'{k}={v}' for k, v in opts.items())}")
        return settings, attrs, what

    def __call__(self, k: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, ctx: dict) -> SliceResult:
        return self.batch([(k, mask, maps, ctx)])[0]

    def batch(self, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]) -> list[SliceResult]:
        """Several slices (same shape) x K samples in one sampler run: batch S * K. Every sample's noise is
        seeded by (file, slice, sample index, seed) and every sampler works per batch element, so the results
        equal slice-by-slice runs (tested)."""
        K, shape = self.samples, items[0][0].shape
        for k, _, _, ctx in items:
            if k.shape != shape:
                raise ValueError(f"{ctx['file']}: slice {ctx['slice']}: k-space {tuple(k.shape)} in a batch of "
                                 f"{tuple(shape)}")
        rep = lambda t: t[None].expand(K, *t.shape)  # noqa: E731
        y = torch.cat([rep(k) for k, _, _, _ in items]).contiguous()
        A = Sense(torch.cat([rep(s) for _, _, s, _ in items]).contiguous(),
                  torch.cat([rep(m) for _, m, _, _ in items]).contiguous())
        noise = NoiseSource([derive_seed(ctx["file"], ctx["slice"], j, self.seed)
                             for _, _, _, ctx in items for j in range(K)])
        noise_std = torch.tensor([float(ctx["noise_std"]) for _, _, _, ctx in items for _ in range(K)],
                                 device=y.device)
        with torch.set_grad_enabled(self.sampler == "dps"):
            x = self.fn(self.denoiser, y, A, self.sigmas.to(y.device), noise=noise, noise_std=noise_std,
                        **self.options)
        x = x.detach()
        out = []
        for n, (_, _, _, ctx) in enumerate(items):
            xs = x[n * K:(n + 1) * K]
            if not torch.all(torch.isfinite(torch.view_as_real(xs))):
                raise DataError(f"{ctx['file']}: slice {ctx['slice']}: a posterior sample contains NaN/Inf; "
                                "nothing written for this file")
            mean = xs.mean(0)
            # one sample has no spread: no reconstruction_std at all rather than a map of zeros
            extra = {"reconstruction_std": torch.sqrt(((xs - mean).abs() ** 2).mean(0))} if K > 1 else {}
            if self.save_samples:
                extra["reconstruction_samples"] = xs.abs()
            out.append(SliceResult(mean, extra, samples=xs))
        return out


def load_prior(checkpoint: str | Path, device: torch.device):
    """(denoiser, config, checkpoint) with EMA weights; ``builtin`` is reserved for the shipped prior."""
    from mri_diffusion.train import load_denoiser

    net, cfg, ck = load_denoiser(checkpoint, use_ema=True, device=device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg, ck
