"""The training loop: one function, any loss, CPU or GPU, one process or torchrun DDP.

Determinism: the data order and every random draw of the loss come from generators seeded by
(seed, step, rank), so a run resumed from a checkpoint continues exactly as if it had not stopped
(bit-identical on CPU). Rank 0 alone writes logs and checkpoints; each rank reads its share of the
global batch (batch_size per rank). The loss (which may call the network several times: GSURE's
divergence) runs inside one DDP forward so that gradients are reduced once per step.

What the log shows (``log.csv``, TensorBoard, the progress bar): ``loss`` is the batch mean of the training
loss. For gsure/ambient it is an unbiased estimate of the denoising error MINUS an unknown constant (the energy of
the clean data, ``losses.gsure``), so it is often negative and jumps with the noise levels drawn each step; its
gradient is what matters. ``heldout`` is a number to follow instead (:class:`HeldOut`): the relative error, on
k-space samples held out of the network's input, of the EMA model on a fixed batch at a fixed noise level and
seed. It is computed from measured k-space only (never a clean image), is comparable across steps, and lower is
better; it includes a constant floor from the measurement noise.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data import PreparedDataset, collate
from ..losses import make_loss
from ..losses.common import per_channel_noise, sq_norm
from ..losses.gsure import network_input
from ..nn import EDMDenoiser
from ..physics.sense import Sense
from .checkpoint import load_checkpoint, save_checkpoint
from .ema import EMA

LOG_FIELDS = ["step", "loss", "loss_std", "heldout", "grad_norm", "lr", "seconds", "slices_per_s"]
LOSS_NOTE = {"gsure": "GSURE", "ambient": "ambient GSURE"}
KEEP_CHECKPOINTS = 3


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message names the step and the batch's slices."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_dist(device: torch.device) -> tuple[Dist, torch.device]:
    """(rank and world size, this process's device). Under torchrun (WORLD_SIZE > 1) every rank of a CUDA run
    takes GPU ``LOCAL_RANK`` (a plain ``cuda`` device would put every rank on GPU 0) and joins the NCCL group;
    CPU runs use gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    import torch.distributed as td

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(td.get_rank(), td.get_world_size()), device


class LossModule(nn.Module):
    """Wraps the denoiser and the loss so DDP sees one forward per step."""

    def __init__(self, denoiser: EDMDenoiser, loss_fn):
        super().__init__()
        self.denoiser = denoiser
        self.loss_fn = loss_fn

    def forward(self, batch, generator):
        return self.loss_fn(self.denoiser, batch, generator)


class HeldOut:
    """Held-out k-space error of the EMA weights on a fixed batch (the first ``slices`` slices of the set).

    A fixed share ``fraction`` of each slice's sampled k-space outside the fully sampled centre (density < 1; any
    sampled k-space for fully sampled data) is held out; the network sees the rest, built as GSURE's input (``losses.gsure.network_input``) at the fixed
    level sigma = ``sigma_rel`` sigma_data (at least 1.05 x the data's noise level) with fixed noise; the value is
    ||M_h (A h - y)||^2 / ||M_h y||^2 over the batch, M_h the held-out samples. Reads k-space, mask, maps and
    noise level only: never a target, whatever the loss.
    """

    def __init__(self, data: PreparedDataset, cfg: TrainConfig, model: nn.Module, device: torch.device,
                 slices: int = 4, fraction: float = 0.25, sigma_rel: float = 0.2):
        items = [{k: v for k, v in data[i].items() if k != "target"} for i in range(min(slices, len(data)))]
        b = collate(items).to(device)
        g = torch.Generator().manual_seed(cfg.train.seed + 7919)
        outer = b.mask * (b.density < 1)  # sampled outside the fully sampled centre; all of it if fully sampled
        outer = torch.where(outer.flatten(1).any(1).reshape(-1, *[1] * (b.mask.ndim - 1)), outer, b.mask)
        self.hold = outer * (torch.rand(b.mask.shape, generator=g) < fraction).to(device)
        self.batch, self.input_mask = b, b.mask - self.hold
        eta = per_channel_noise(b.noise_std)
        self.sigma = torch.clamp(torch.full_like(eta, sigma_rel * cfg.net.sigma_data), min=1.05 * eta)
        self.inverse, self.seed = cfg.loss_options.inverse(), cfg.train.seed
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, ema: EMA) -> float:
        self.model.load_state_dict(ema.state_dict())
        g = torch.Generator(device=self.batch.kspace.device).manual_seed(self.seed)
        inp = network_input(self.batch, self.sigma, g, self.inverse, input_mask=self.input_mask)
        y = self.batch.kspace * self.hold
        energy = float(sq_norm(y).sum())
        return float(sq_norm(Sense(self.batch.maps, self.hold)(self.model(inp.u, self.sigma)) - y).sum()) / energy \
            if energy > 0 else math.nan


def batch_indices(step: int, n: int, batch_size: int, dist: Dist, seed: int) -> list[int]:
    """This rank's slice indices for ``step``: consecutive windows of per-epoch seeded permutations."""
    per_step = batch_size * dist.world
    start = step * per_step
    out = []
    for pos in range(start + dist.rank * batch_size, start + (dist.rank + 1) * batch_size):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[i]))
    return out


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def _resume_key(cfg: TrainConfig) -> str:
    """Everything but the total step count must match to resume (extending a run is allowed)."""
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, steps=1)).hash()


def _lr(cfg: TrainConfig, step: int) -> float:
    w = cfg.optim.warmup_steps
    return cfg.optim.lr * min(1.0, (step + 1) / w) if w else cfg.optim.lr


def _trim_log(path: Path, last_step: int) -> None:
    """After a resume from step k, drop log rows written after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          device: torch.device = torch.device("cpu"), progress: bool = True, minutes: float | None = None,
          tensorboard: bool = True, model: nn.Module | None = None, init: str | Path | None = None) -> dict:
    """Train per ``cfg`` on a prepared set; writes ``out_dir/{config.yaml, log.csv, tb/, checkpoint.pt}``.

    ``model``: the denoiser to train (default ``EDMDenoiser(cfg.net)``); view-composed priors pass their
    ``ViewComposedDenoiser`` (``train.stages``), whose frozen parameters the optimiser leaves alone.
    ``init``: a checkpoint whose weights and EMA start the run (fine-tuning, e.g. SFBD's rounds); the optimiser
    and the step count start afresh. Ignored when resuming (the run's own checkpoint wins).

    Returns {'step', 'checkpoint', 'losses'} (the per-step mean losses of this process).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    dist, device = _init_dist(device)
    torch.set_flush_denormal(True)
    data = PreparedDataset(data_dir, with_targets=cfg.loss == "dsm")
    ckpt_path = out_dir / "checkpoint.pt"
    if dist.main:
        if ckpt_path.exists() and not resume:
            raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose "
                                  "another --out")
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    denoiser = (EDMDenoiser(cfg.net) if model is None else model).to(device)
    ema = EMA(denoiser, cfg.train.ema_half_life)
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    start = 0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}")
        ckpt = load_checkpoint(ckpt_path)
        if _resume_key(TrainConfig.from_dict(ckpt["config"], legacy=True)) != _resume_key(cfg):
            raise ValueError(f"--resume: {out_dir} was trained with a different config; use the run's own "
                             f"{out_dir / 'config.yaml'}")
        denoiser.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
    elif init is not None:
        ck = load_checkpoint(init)
        try:
            denoiser.load_state_dict(ck["model"])
            ema.load_state_dict(ck["ema"])
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"{init}: its network does not match this config's net ({str(e).splitlines()[0]})") from None
    if dist.main:
        (out_dir / "config.yaml").write_text(cfg.to_yaml())
        _trim_log(out_dir / "log.csv", start)
    module: nn.Module = LossModule(denoiser, make_loss(cfg.loss, cfg.loss_options, cfg.net.sigma_data,
                                                       cfg.residual_weight if cfg.views else 0.0))
    if dist.world > 1:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    writer = None
    if dist.main and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start)
    amp = cfg.train.amp and device.type == "cuda"
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    losses: list[float] = []
    step = start
    meta = {"data": {"root": str(Path(data_dir).resolve()), "config_hash": data.manifest.get("config_hash"),
                     "num_slices": len(data), "image_shape": list(data.image_shape),
                     "view": data.manifest.get("view")}}

    def checkpoint(at_step: int) -> Path:
        state = {"config": cfg.to_dict(), "model": denoiser.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "step": at_step, "rng": {"torch": torch.get_rng_state()}, **meta}
        p = save_checkpoint(ckpt_path, state)
        save_checkpoint(out_dir / "checkpoints" / f"ckpt_{at_step:07d}.pt", state)
        old = sorted((out_dir / "checkpoints").glob("ckpt_*.pt"))[:-KEEP_CHECKPOINTS]
        for o in old:
            o.unlink(missing_ok=True)
        return p

    log_f = open(out_dir / "log.csv", "a", newline="") if dist.main else None
    log = csv.DictWriter(log_f, LOG_FIELDS) if log_f else None
    if log_f is not None and log_f.tell() == 0:
        log.writeheader()
    bar = tqdm(total=cfg.train.steps, initial=start, desc=f"train {cfg.name}", unit="step",
               disable=not (progress and dist.main))
    heldout = HeldOut(data, cfg, denoiser, device) if dist.main else None
    if progress and dist.main and cfg.loss in LOSS_NOTE:
        bar.write(f"note: the {LOSS_NOTE[cfg.loss]} loss is an unbiased estimate of the denoising error up to an "
                  "unknown constant: it can be negative and jumps between steps. Follow 'heldout' (log.csv): the "
                  "error on held-out k-space of the EMA model on a fixed batch, from measured data only; lower is "
                  "better.")
    try:
        t_last = time.perf_counter()
        for step in range(start, cfg.train.steps):
            idx = batch_indices(step, len(data), cfg.train.batch_size, dist, cfg.train.seed)
            batch = collate([data[i] for i in idx]).to(device)
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            gen = _step_generator(cfg.train.seed, step, dist.rank, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                per_sample = module(batch, gen)
            loss = per_sample.float().mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss at step {step} (slices {', '.join(batch.ids)}); "
                                    f"the last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none'}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, clip))
            opt.step()
            ema.update(denoiser)
            losses.append(float(loss.detach()))
            done = step + 1
            if dist.main and (done % cfg.train.log_every == 0 or done == cfg.train.steps):
                now = time.perf_counter()
                row = {"step": done, "loss": losses[-1], "loss_std": float(per_sample.detach().float().std())
                       if per_sample.numel() > 1 else 0.0, "heldout": heldout(ema), "grad_norm": gnorm,
                       "lr": _lr(cfg, step),
                       "seconds": now - t_last,
                       "slices_per_s": cfg.train.log_every * cfg.train.batch_size * dist.world / max(now - t_last, 1e-9)}
                t_last = now
                log.writerow(row)
                log_f.flush()
                if writer:
                    for k in ("loss", "heldout", "grad_norm", "lr", "slices_per_s"):
                        writer.add_scalar(f"train/{k}", row[k], done)
                bar.set_postfix(loss=f"{losses[-1]:.4g}", heldout=f"{row['heldout']:.4g}")
            bar.update(1)
            out_of_time = deadline is not None and time.monotonic() > deadline
            if dist.main and (done % cfg.train.ckpt_every == 0 or done == cfg.train.steps or out_of_time):
                checkpoint(done)
            step = done
            if out_of_time:
                break
    finally:
        bar.close()
        if log_f:
            log_f.close()
        if writer:
            writer.close()
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()
    return {"step": step, "checkpoint": ckpt_path, "losses": losses}
