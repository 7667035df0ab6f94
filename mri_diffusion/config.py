"""Typed training configuration loaded from YAML; unknown keys and invalid values are errors naming the key.

A run's resolved config is written next to its outputs (``config.yaml``) and inside every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .nn import NetConfig

LOSSES = ("dsm", "gsure", "ambient", "tweedie")


class ConfigError(ValueError):
    """A config problem; the message names the key."""


# Keys that earlier versions wrote into checkpoints: dropped when a checkpoint's config is read
# (``from_dict(..., legacy=True)``), an error with the replacement named in a config a user writes.
RETIRED = {"loss_options": {"cg_iters": "loss_options.inverse_iters and loss_options.lambda_min (a Chebyshev "
                                        "approximate inverse that is linear in the data: CG made GSURE biased)"}}


@dataclass(frozen=True)
class LossOptions:
    p_mean: float = -1.2          # EDM log-normal noise levels (Karras et al. 2022)
    p_std: float = 1.2
    inverse_iters: int = 20       # gsure/ambient: degree K of the Chebyshev approximate A^+ (physics/polyinv.py)
    lambda_min: float = 0.01      # gsure/ambient: eigenvalues of A^H A inverted to 1/T_K accuracy from here up
    divergence: str = "fd"        # gsure/ambient: 'fd' (two network calls) or 'jvp' (forward-mode AD); fp32
    fd_rel: float = 1e-3          # gsure/ambient: finite-difference step relative to sigma
    weighted: bool = True         # density weighting W = 1/E[M]
    further_fraction: float = 0.2  # ambient: share of sampled outer lines dropped again
    # tweedie (losses/tweedie.py; fully sampled noisy k-space): double Tweedie above sigma_n on every sample,
    # plus the two-draw consistency term below sigma_n on a random share of each batch's samples
    consistency_fraction: float = 0.25  # tweedie: expected share of samples with the consistency term (0: off);
    #                                     costs 3 extra network evaluations each (B + 3 K per step)
    consistency_weight: float = 1.0     # tweedie: its weight (scaled by 1/fraction: the fraction sets cost only)
    consistency_t_ratio: float = 2.0    # tweedie: upper level t log-uniform in [sigma_n, ratio sigma_n] (1: t = sigma_n)
    consistency_grad: bool = False      # tweedie: also train through D(x_t, t) and the reverse-step draws
    tweedie_above: str = "double_tweedie"  # tweedie: the term at sigma >= sigma_n: 'double_tweedie' (the paper) or
    #                                        'gsure' (SURE on the same data, losses/gsure.py; its Stein options apply)

    def inverse(self):
        """The fixed linear approximate pseudo-inverse of gsure/ambient (``physics.polyinv``)."""
        from .physics.polyinv import ChebyshevInverse

        return ChebyshevInverse(self.inverse_iters, self.lambda_min)

    def validate(self):
        _check(self.inverse_iters >= 1, "loss_options.inverse_iters", self.inverse_iters, "must be >= 1")
        _check(0 < self.lambda_min < 1, "loss_options.lambda_min", self.lambda_min, "must be in (0, 1)")
        _check(self.divergence in ("fd", "jvp"), "loss_options.divergence", self.divergence, "must be fd or jvp")
        _check(self.fd_rel > 0, "loss_options.fd_rel", self.fd_rel, "must be > 0")
        _check(0 <= self.further_fraction < 1, "loss_options.further_fraction", self.further_fraction,
               "must be in [0, 1)")
        _check(self.p_std > 0, "loss_options.p_std", self.p_std, "must be > 0")
        _check(0 <= self.consistency_fraction <= 1, "loss_options.consistency_fraction", self.consistency_fraction,
               "must be in [0, 1]")
        _check(self.consistency_weight >= 0, "loss_options.consistency_weight", self.consistency_weight,
               "must be >= 0")
        _check(self.tweedie_above in ("double_tweedie", "gsure"), "loss_options.tweedie_above", self.tweedie_above,
               "must be double_tweedie or gsure")
        _check(self.consistency_t_ratio >= 1, "loss_options.consistency_t_ratio", self.consistency_t_ratio,
               "must be >= 1 (t >= sigma_n)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0        # max global gradient norm; 0 disables
    warmup_steps: int = 100

    def validate(self):
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
               "must be two numbers in [0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    steps: int = 2000
    batch_size: int = 8
    seed: int = 0
    ema_half_life: int = 200      # EMA half-life in optimizer steps
    log_every: int = 10
    ckpt_every: int = 500
    amp: bool = True              # bf16 autocast in the network on CUDA only; FFT/CG stay complex64
    num_workers: int = 0

    def validate(self):
        for k in ("steps", "batch_size", "log_every", "ckpt_every"):
            _check(getattr(self, k) >= 1, f"train.{k}", getattr(self, k), "must be >= 1")
        _check(self.ema_half_life >= 0, "train.ema_half_life", self.ema_half_life, "must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers", self.num_workers, "must be >= 0")


@dataclass(frozen=True)
class ViewConfig:
    """One view model of a view-composed prior (``mri_diffusion.nn.composed``).

    ``view``: 'lowres:F' or 'acs' (``physics.views.parse_view``); ``data``: its prepared view set
    (``mridiff prep --view ...``); ``config``: how to train it (a full ``TrainConfig``: dsm when the view
    is fully sampled, gsure when not); ``checkpoint``: use this trained view model instead of training one;
    ``fraction``: (fh, fw) of the full matrix, filled in from the view set's manifest at training time.
    """

    name: str
    view: str
    config: "TrainConfig"
    data: str | None = None
    checkpoint: str | None = None
    fraction: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, d: dict, index: int, legacy: bool = False) -> "ViewConfig":
        key = f"views[{index}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: expected a mapping, got {d!r}")
        known = {"name", "view", "config", "data", "checkpoint", "fraction"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(key + '.' + u for u in unknown)}; valid: {sorted(known)}")
        for req in ("name", "view", "config"):
            if req not in d:
                raise ConfigError(f"{key}.{req} is required")
        from .physics.views import parse_view

        try:
            parse_view(d["view"])
        except ValueError as e:
            raise ConfigError(f"{key}.view: {e}") from None
        if d.get("data") is None and d.get("checkpoint") is None:
            raise ConfigError(f"{key}: give 'data' (a prepared view set to train on) or 'checkpoint'")
        try:
            sub = TrainConfig.from_dict(d["config"], legacy)
        except ConfigError as e:
            raise ConfigError(f"{key}.config: {e}") from None
        if sub.views:
            raise ConfigError(f"{key}.config: a view model cannot itself have views")
        frac = d.get("fraction")
        if frac is not None:
            frac = tuple(float(v) for v in frac)
            _check(len(frac) == 2 and all(0 < v <= 1 for v in frac), f"{key}.fraction", frac,
                   "must be two numbers in (0, 1]")
        return cls(str(d["name"]), str(d["view"]), sub, d.get("data"), d.get("checkpoint"), frac)

    def to_dict(self) -> dict:
        return {"name": self.name, "view": self.view, "data": self.data, "checkpoint": self.checkpoint,
                "fraction": None if self.fraction is None else list(self.fraction), "config": self.config.to_dict()}


@dataclass(frozen=True)
class SFBDConfig:
    """SFBD (Lu, Wu, Yu 2025, Stochastic Forward-Backward Deconvolution; ``recon/sfbd.py``): a few fully sampled
    scans plus many undersampled ones. Pretrain with DSM on the clean scans (or start from ``init``, e.g. a GSURE
    prior), then ``rounds`` x (backward: one posterior draw per undersampled training scan with the current EMA
    model; forward: DSM fine-tuning on the clean scans plus these draws for ``steps_per_round`` steps).

    The clean set is ``clean_files`` (source file names, i.e. volumes) or ``clean_fraction`` of the files
    (rounded, at least one, drawn with ``seed``); the other files' fully sampled targets are never read."""

    clean_fraction: float | None = None
    clean_files: tuple[str, ...] = ()
    pretrain_steps: int = 1000
    rounds: int = 3
    steps_per_round: int = 500
    sampler: str = "dds"
    sampler_steps: int | None = None   # None: the sampler's default
    posterior_mean: bool = False       # False: one posterior sample per scan and round (the paper)
    samples: int = 4                   # draws averaged when posterior_mean
    batch_slices: int = 8              # scans sampled together in the backward step
    init: str | None = None            # start from this checkpoint instead of clean pretraining
    seed: int = 0

    def validate(self) -> None:
        has_frac, has_files = self.clean_fraction is not None, bool(self.clean_files)
        _check(has_frac != has_files or (not has_frac and not has_files and self.init is not None),
               "sfbd.clean_fraction / sfbd.clean_files", (self.clean_fraction, self.clean_files),
               "give exactly one of them (or neither, with sfbd.init)")
        if has_frac:
            _check(0 < float(self.clean_fraction) < 1, "sfbd.clean_fraction", self.clean_fraction, "must be in (0, 1)")
        for key in ("rounds", "steps_per_round", "samples", "batch_slices"):
            _check(int(getattr(self, key)) >= 1, f"sfbd.{key}", getattr(self, key), "must be >= 1")
        _check(int(self.pretrain_steps) >= (0 if self.init else 1), "sfbd.pretrain_steps", self.pretrain_steps,
               "must be >= 1 (0 only with sfbd.init)")
        _check(self.sampler_steps is None or int(self.sampler_steps) >= 1, "sfbd.sampler_steps", self.sampler_steps,
               "must be >= 1 or null")

    @classmethod
    def from_dict(cls, d: Any) -> "SFBDConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"sfbd: expected a mapping, got {d!r}")
        _no_unknown(d, cls, "sfbd.")
        kw = dict(d)
        types = {"clean_fraction": (float, True), "pretrain_steps": (int, False), "rounds": (int, False),
                 "steps_per_round": (int, False), "sampler": (str, False), "sampler_steps": (int, True),
                 "posterior_mean": (bool, False), "samples": (int, False), "batch_slices": (int, False),
                 "init": (str, True), "seed": (int, False)}
        for k, (t, nullable) in types.items():
            if k not in kw or (kw[k] is None and nullable):
                continue
            v = kw[k]
            if t is float and isinstance(v, (int, float, str)) and not isinstance(v, bool):
                try:
                    kw[k] = float(v)
                    continue
                except ValueError:
                    pass
            ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
            if not ok:
                raise ConfigError(f"sfbd.{k} = {v!r}: expected {t.__name__}{' or null' if nullable else ''}")
        if "clean_files" in kw:
            files = kw["clean_files"] or []
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ConfigError(f"sfbd.clean_files = {files!r}: expected a list of file names")
            kw["clean_files"] = tuple(files)
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        out = asdict(self)
        out["clean_files"] = list(self.clean_files)
        return out


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    loss: str = "gsure"
    net: NetConfig = field(default_factory=NetConfig)
    loss_options: LossOptions = field(default_factory=LossOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    views: tuple[ViewConfig, ...] = ()  # view models: then ``net`` is the residual r_theta's network
    residual: bool = True               # views: learn the residual score (False: views alone, no training)
    residual_weight: float = 0.0        # views: weight of the residual regulariser (nn/composed.py)
    sfbd: SFBDConfig | None = None      # SFBD recipe (recon/sfbd.py): the forward step trains with ``loss`` = dsm

    def __post_init__(self):
        _check(self.loss in LOSSES, "loss", self.loss, f"must be one of {LOSSES}")
        self.loss_options.validate()
        self.optim.validate()
        self.train.validate()
        _check(self.residual_weight >= 0, "residual_weight", self.residual_weight, "must be >= 0")
        names = [v.name for v in self.views]
        _check(len(set(names)) == len(names), "views", names, "view names must be unique")
        if self.sfbd is not None:
            _check(self.loss == "dsm", "loss", self.loss, "sfbd's forward step is denoising score matching: use dsm")
            _check(not self.views, "views", len(self.views), "sfbd does not combine with view models")

    @classmethod
    def from_dict(cls, d: dict[str, Any], legacy: bool = False) -> "TrainConfig":
        """From a plain dict. ``legacy=True`` (configs stored in older checkpoints) drops ``RETIRED`` keys."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a mapping, got {type(d).__name__}")
        _no_unknown(d, cls, "")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in ("name", "loss")}
        views = d.get("views") or []
        if not isinstance(views, list):
            raise ConfigError(f"views: expected a list, got {views!r}")
        kw["views"] = tuple(ViewConfig.from_dict(v, i, legacy) for i, v in enumerate(views))
        if "residual" in d:
            _check(isinstance(d["residual"], bool), "residual", d["residual"], "expected true or false")
            kw["residual"] = d["residual"]
        if "residual_weight" in d:
            rw = d["residual_weight"]
            try:
                kw["residual_weight"] = float(rw)
            except (TypeError, ValueError):
                raise ConfigError(f"residual_weight = {rw!r}: expected a number") from None
        if d.get("sfbd") is not None:
            kw["sfbd"] = SFBDConfig.from_dict(d["sfbd"])
        try:
            kw["net"] = NetConfig.from_dict(d.get("net"))
        except ValueError as e:
            raise ConfigError(f"net: {e}") from None
        for key, sub in (("loss_options", LossOptions), ("optim", OptimConfig), ("train", RunConfig)):
            part = d.get(key) or {}
            if not isinstance(part, dict):
                raise ConfigError(f"{key}: expected a mapping, got {part!r}")
            part = _retire(part, key, legacy)
            _no_unknown(part, sub, key + ".")
            part = {k: tuple(v) if isinstance(v, list) else v for k, v in part.items()}
            part = _coerce_floats(part, sub)
            _check_types(part, sub, key)
            kw[key] = sub(**part)
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        for dotted, value in (overrides or {}).items():
            node = d
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        out = {"name": self.name, "loss": self.loss, "net": self.net.to_dict()}
        for key in ("loss_options", "optim", "train"):
            out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(getattr(self, key)).items()}
        if self.views:  # plain priors keep the dict (and hash) they always had
            out["residual"] = self.residual
            out["residual_weight"] = self.residual_weight
            out["views"] = [v.to_dict() for v in self.views]
        if self.sfbd is not None:  # plain priors keep the dict (and hash) they always had
            out["sfbd"] = self.sfbd.to_dict()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _check(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


def _retire(part: dict, key: str, legacy: bool) -> dict:
    retired = RETIRED.get(key, {})
    for k in sorted(set(part) & set(retired)):
        if not legacy:
            raise ConfigError(f"{key}.{k} was retired: use {retired[k]}")
    return {k: v for k, v in part.items() if k not in retired}


def _no_unknown(d: dict, cls, prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid: "
                          f"{', '.join(prefix + k for k in sorted(known))}")


def _coerce_floats(part: dict, cls) -> dict:
    """YAML 1.1 reads '1e-3' (no dot) as a string: accept numeric strings for float fields."""
    defaults = cls()
    out = dict(part)
    for k, v in part.items():
        if isinstance(getattr(defaults, k), float) and isinstance(v, str):
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def _check_types(part: dict, cls, prefix: str) -> None:
    defaults = cls()
    for k, v in part.items():
        ref = getattr(defaults, k)
        if isinstance(ref, bool):
            ok = isinstance(v, bool)
        elif isinstance(ref, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(ref, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(ref, str):
            ok = isinstance(v, str)
        else:
            ok = isinstance(v, type(ref)) or is_dataclass(ref)
        if not ok:
            raise ConfigError(f"{prefix}.{k} = {v!r}: expected {type(ref).__name__}")
