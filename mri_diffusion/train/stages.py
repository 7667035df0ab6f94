"""Multi-stage training of a view-composed prior: view models first, then the residual score.

``train_prior(cfg, ...)`` is what ``mridiff train`` runs. A config without ``views`` is one plain stage
(``loop.train``). With ``views`` (``configs/train/views_lowres.yaml``):

1. each view model trains on its own prepared view set into ``OUT/views/NAME/`` (skipped when that
   run already reached its step count; continued when interrupted), or is taken from ``checkpoint``;
2. the residual r_theta trains with the config's loss (GSURE on the scarce full-resolution undersampled
   data) inside ``ViewComposedDenoiser`` with the view models frozen, into ``OUT/checkpoint.pt``.

The final checkpoint holds the whole composed model (view weights included) and a config with every
view's definition resolved, so ``load_denoiser`` rebuilds a plain ``D(x, sigma)`` from it alone.
Mismatches (a view set of another full matrix, a view checkpoint of another view) are ``ConfigError``s.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig, ViewConfig
from ..data import PreparedDataset
from ..physics.views import parse_view
from .checkpoint import load_checkpoint, load_denoiser, save_checkpoint
from .loop import train


def _view_checkpoint(v: ViewConfig, out_dir: Path) -> Path:
    return Path(v.checkpoint) if v.checkpoint is not None else out_dir / "views" / v.name / "checkpoint.pt"


def _finished(path: Path, steps: int) -> bool:
    return path.exists() and int(load_checkpoint(path)["step"]) >= steps


def resolve_view(v: ViewConfig, ckpt: dict, path: Path, full_shape: tuple[int, int]) -> ViewConfig:
    """Check a trained view model against its definition and the residual's matrix; fill in ``fraction``."""
    geo = (ckpt.get("data") or {}).get("view")
    if not geo:
        raise ConfigError(f"views '{v.name}': {path} was not trained on a view set (its data has no 'view'); "
                          "prepare one with mridiff prep --view ...")
    if parse_view(geo["spec"]) != parse_view(v.view):
        raise ConfigError(f"views '{v.name}': the model in {path} was trained on view {geo['spec']!r}, "
                          f"the config asks for {v.view!r}")
    if tuple(geo["full_shape"]) != tuple(full_shape):
        raise ConfigError(f"views '{v.name}': its view set was cut from a {tuple(geo['full_shape'])} matrix, the "
                          f"residual's data is {tuple(full_shape)}")
    return replace(v, fraction=tuple(float(f) for f in geo["fraction"]),
                   config=TrainConfig.from_dict(ckpt["config"], legacy=True))


def train_prior(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
                device: torch.device = torch.device("cpu"), progress: bool = True, minutes: float | None = None,
                tensorboard: bool = True) -> dict:
    """All stages of ``cfg``; returns the last stage's result ({'step', 'checkpoint', 'losses'})."""
    if not cfg.views:
        return train(cfg, data_dir, out_dir, resume=resume, device=device, progress=progress, minutes=minutes,
                     tensorboard=tensorboard)
    from ..nn.composed import ViewComposedDenoiser

    out_dir = Path(out_dir)
    if (out_dir / "checkpoint.pt").exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    full_shape = PreparedDataset(data_dir, with_targets=False).image_shape
    resolved, views = [], []
    for v in cfg.views:
        path = _view_checkpoint(v, out_dir)
        if v.checkpoint is None and not _finished(path, v.config.train.steps):
            if v.data is None:
                raise ConfigError(f"views '{v.name}': no data to train it on and no checkpoint")
            train(v.config, v.data, path.parent, resume=path.exists(), device=device, progress=progress,
                  minutes=minutes, tensorboard=tensorboard)
            if not _finished(path, v.config.train.steps):
                return {"step": 0, "checkpoint": path, "losses": [], "stopped_in": f"views/{v.name}"}
        net, _, ck = load_denoiser(path, use_ema=True)
        rv = resolve_view(v, ck, path, full_shape)
        resolved.append(rv)
        views.append((rv.name, rv.fraction, net))
    cfg = replace(cfg, views=tuple(resolved))
    model = ViewComposedDenoiser(views, cfg.net if cfg.residual else None, full_shape)
    if not cfg.residual:  # views alone: nothing to train; one checkpoint all the same
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(cfg.to_yaml())
        state = model.state_dict()
        path = save_checkpoint(out_dir / "checkpoint.pt", {
            "config": cfg.to_dict(), "model": state, "ema": state, "step": 0,
            "data": {"root": str(Path(data_dir).resolve()), "image_shape": list(full_shape), "view": None}})
        return {"step": 0, "checkpoint": path, "losses": []}
    return train(cfg, data_dir, out_dir, resume=resume, device=device, progress=progress, minutes=minutes,
                 tensorboard=tensorboard, model=model)
