"""Checkpoints: ``{format, version, config, model, ema, optimizer, step, rng, data}``.

Written atomically (temp file in the same folder, fsync, rename), loaded with ``torch.load(weights_only=True)``
so that a file carrying pickled code is refused without running anything. Plain tensors, numbers,
strings, lists and dicts only.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..atomic import atomic_write

FORMAT = "mri-diffusion-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    with atomic_write(path, overwrite=True) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return path


def _torch_load(path: Path) -> dict:
    """``torch.load(weights_only=True)`` with refusals in our words: torch's own message suggests retrying with
    ``weights_only=False``, i.e. running the file's code, which is exactly what must not happen."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        raise CheckpointError(f"{path}: not a checkpoint file (neither a PyTorch archive nor a pickle"
                              f"{'; the file is empty' if not head else ''})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notice
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (found {found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused: not a safe checkpoint. It holds pickled Python objects or code"
                              f"{what}, which are never loaded here; only plain tensors, numbers, strings, lists and "
                              "dicts (checkpoints written by mridiff train) are accepted") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from None


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mri-diffusion checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    for key in ("config", "model", "ema", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def load_denoiser(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """(denoiser in eval mode, TrainConfig, checkpoint dict) from a checkpoint file."""
    from ..config import TrainConfig
    from ..nn import EDMDenoiser

    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"], legacy=True)
    net = EDMDenoiser(cfg.net) if not cfg.views else _composed_skeleton(path, cfg, ckpt)
    try:
        net.load_state_dict(ckpt["ema" if use_ema else "model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture in its config "
                              f"({str(e).splitlines()[0]})") from None
    return net.to(device).eval(), cfg, ckpt


def _composed_skeleton(path: Path, cfg, ckpt: dict):
    """An untrained ``ViewComposedDenoiser`` shaped like the checkpoint's config (weights loaded after)."""
    from ..nn import EDMDenoiser
    from ..nn.composed import ViewComposedDenoiser

    state = ckpt["ema"]
    views = []
    for v in cfg.views:
        if v.fraction is None:
            raise CheckpointError(f"{path}: view '{v.name}' has no resolved geometry: the views stage did not finish")
        if not any(k.startswith(f"views.{v.name}.") for k in state):
            raise CheckpointError(f"{path}: checkpoint lacks the weights of stage 'views/{v.name}'")
        views.append((v.name, v.fraction, EDMDenoiser(v.config.net)))
    if cfg.residual and not any(k.startswith("residual.") for k in state):
        raise CheckpointError(f"{path}: checkpoint lacks the weights of stage 'residual'")
    shape = tuple((ckpt.get("data") or {}).get("image_shape") or (64, 64))
    return ViewComposedDenoiser(views, cfg.net if cfg.residual else None, shape)


def resolve_checkpoint(spec: str | Path) -> Path:
    """A path, or the name of a prior shipped with the package (``builtin``, ``builtin-colin27``)."""
    from ..priors import SHIPPED

    if str(spec) in SHIPPED:
        path = SHIPPED[str(spec)]
        if not path.exists():
            raise CheckpointError(f"no shipped prior {spec!r} in this installation ({path} is missing)")
        return path
    return Path(spec)


def export_prior(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """A small inference-only copy: EMA weights (as both 'model' and 'ema'), config, step, data provenance."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    ck = load_checkpoint(src)
    ema = {k: v.clone().contiguous() for k, v in ck["ema"].items()}
    state = {"config": ck["config"], "model": ema, "ema": ema, "step": ck["step"],
             "data": ck.get("data", {}), "exported_from": str(src)}
    return save_checkpoint(dst, state)
