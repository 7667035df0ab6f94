"""SFBD: learn a prior from a few fully sampled scans plus many undersampled ones (Lu, Wu, Yu 2025, "Stochastic
Forward-Backward Deconvolution", Algorithm 1; ``../shared/research/anchors.md`` 3.6, 4.5).

``mridiff train`` runs this for a config with an ``sfbd`` section (``mri_diffusion.config.SFBDConfig``,
``configs/train/sfbd_*.yaml``) on one prepared set (``mridiff prep`` of fully sampled files, so that the clean
files' targets exist; the other files' targets are never read):

1. clean set: the files (volumes) named in ``clean_files``, or ``clean_fraction`` of them drawn with ``seed``;
   written as the prepared set ``OUT/clean/`` (their undersampled k-space and fully sampled targets);
2. pretraining: DSM on ``OUT/clean/`` for ``pretrain_steps`` into ``OUT/pretrain/`` (or start from ``init``,
   e.g. a GSURE prior trained on all the undersampled data);
3. round k = 1..``rounds``:
   - backward step: every undersampled training scan gets one posterior draw (``posterior_mean``: the mean of
     ``samples`` draws) from the previous stage's EMA model, through the project's own samplers
     (``recon.diffusion.DiffusionRecon``: batched, each draw seeded by (slice id, round, seed)). Written with
     the clean scans as the auditable prepared set ``OUT/rounds/k/data/`` (targets: clean images and the
     draws; its manifest records the model, sampler, network calls and the clean ids);
   - forward step: DSM fine-tuning from the previous stage's weights and EMA for ``steps_per_round`` steps into
     ``OUT/rounds/k/train/``;
4. the last stage's checkpoint is copied to ``OUT/checkpoint.pt``.

Every stage is skipped when finished and continued when interrupted (``--resume``); ``OUT/sfbd.json`` records
each stage's wall-clock time. A mismatch is refused naming the stage: an ``init`` prior or a round set of
another matrix or network, a round whose predecessor is missing, clean files not in the prepared set.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mri_diffusion.atomic import atomic_write_text
from mri_diffusion.config import ConfigError, SFBDConfig, TrainConfig
from data_prep.shards import ShardWriter
from mri_diffusion.data import MANIFEST, SHARD_DIR, TARGET_DIR, PreparedDataset, read_manifest
from mri_diffusion.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from mri_diffusion.train.loop import train

STATE = "sfbd.json"


def _file_of(slice_id: str) -> str:
    return slice_id.rsplit(":", 1)[0]


def slice_ids(data: PreparedDataset) -> list[str]:
    """Every slice id of a prepared set, in dataset order (from the manifest, no shard read)."""
    ids = [i for s in data.manifest["shards"] for i in s.get("ids", [])]
    if len(ids) != len(data):  # older manifests without per-shard ids: read them
        ids = [data[i]["id"] for i in range(len(data))]
    return ids


def clean_split(ids: list[str], cfg: SFBDConfig, where: str) -> tuple[list[str], list[int], list[int]]:
    """(clean file names, indices of the clean slices, indices of the undersampled ones)."""
    files = sorted({_file_of(i) for i in ids})
    if cfg.clean_files:
        missing = sorted(set(cfg.clean_files) - set(files))
        if missing:
            raise ConfigError(f"sfbd.clean_files: {', '.join(missing)} not in the prepared set {where} (its files: "
                              f"{', '.join(files[:8])}{' ...' if len(files) > 8 else ''})")
        clean = sorted(cfg.clean_files)
    elif cfg.clean_fraction is not None:
        n = max(1, int(round(cfg.clean_fraction * len(files))))
        clean = sorted(np.random.default_rng(cfg.seed).permutation(files)[:n].tolist())
    else:
        clean = []
    if len(clean) >= len(files):
        raise ConfigError(f"sfbd: every file of {where} is in the clean set: nothing undersampled to learn from")
    cs = set(clean)
    return clean, [i for i, s in enumerate(ids) if _file_of(s) in cs], [i for i, s in enumerate(ids) if _file_of(s) not in cs]


def write_set(src: PreparedDataset, dest: Path, indices: list[int], estimates: dict[int, np.ndarray],
              extra: dict, shard_size: int = 64) -> Path:
    """The slices ``indices`` of ``src`` as a prepared set at ``dest`` (``mri_diffusion.data`` format, written
    under a temporary name and renamed). Targets: ``estimates[i]`` (complex (H, W), normalised units) for the
    slices that have one, else the source's own target (clean slices only: it is read for no other)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SHARD_DIR).mkdir(parents=True)
    (tmp / TARGET_DIR).mkdir()
    clean_reader = PreparedDataset(src.root, with_targets=True) if any(i not in estimates for i in indices) else None
    shards, tshards = [], []
    for n0 in range(0, len(indices), shard_size):
        part = indices[n0:n0 + shard_size]
        with ShardWriter(tmp, len(shards), len(part), with_targets=True) as w:
            for i in part:
                it = src[i]
                t = np.asarray(estimates[i]) if i in estimates else clean_reader[i]["target"].numpy()
                w.add({**{k: it[k].numpy() for k in ("kspace", "mask", "density", "maps")},
                       "noise_std": float(it["noise_std"]), "scale": float(it["scale"]), "id": it["id"],
                       "target": t, "rss": np.abs(t)})
        shards.append(w.entry)
        tshards.append(w.target_entry)
    manifest = {k: v for k, v in src.manifest.items() if k not in ("shards", "target_shards", "num_slices")}
    manifest.update({"num_slices": len(indices), "shards": shards, "has_targets": True, "target_shards": tshards,
                     "sfbd": extra, "derived_from": str(src.root.resolve())})
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def backward_step(checkpoint: Path, data: PreparedDataset, indices: list[int], cfg: SFBDConfig, round_k: int,
                  device: torch.device, progress: bool = True) -> tuple[dict[int, np.ndarray], dict]:
    """One posterior draw (or the mean of ``cfg.samples``) per undersampled scan from the EMA model in
    ``checkpoint``. Returns ({index: complex (H, W) estimate}, a record for the manifest)."""
    from tqdm import tqdm

    from .diffusion import DiffusionRecon, load_prior

    net, _, ck = load_prior(checkpoint, device)
    k = cfg.samples if cfg.posterior_mean else 1
    rec = DiffusionRecon(net, cfg.sampler, cfg.sampler_steps, k, cfg.seed, False, {})
    out: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(indices), desc=f"sfbd round {round_k}: posterior draws", unit="scan", disable=not progress)
    for n0 in range(0, len(indices), cfg.batch_slices):
        part = indices[n0:n0 + cfg.batch_slices]
        items = []
        for i in part:
            it = data[i]
            items.append((it["kspace"].to(device), it["mask"].to(device), it["maps"].to(device),
                          {"file": it["id"], "slice": round_k, "noise_std": float(it["noise_std"])}))
        for i, res in zip(part, rec.batch(items)):
            out[i] = res.image.detach().cpu().to(torch.complex64).numpy()
        bar.update(len(part))
    bar.close()
    record = {"round": round_k, "model": str(checkpoint), "model_step": int(ck["step"]), "sampler": rec.sampler,
              "sampler_steps": len(rec.sigmas) - 1, "sampler_options": rec.all_options,
              "estimate": f"mean of {k} posterior samples" if cfg.posterior_mean else "one posterior sample",
              "network_calls_per_scan": rec.calls_per_sample * k, "scans": len(indices), "seed": cfg.seed}
    return out, record


def _check_matrix(stage: str, shape, want, path) -> None:
    if shape is not None and tuple(shape) != tuple(want):
        raise ConfigError(f"sfbd stage {stage}: {path} is at matrix {tuple(shape)}, the training set at {tuple(want)}")


def train_sfbd(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
               device: torch.device = torch.device("cpu"), progress: bool = True, minutes: float | None = None,
               tensorboard: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the SFBD recipe of the module doc. Returns {'step', 'checkpoint', 'stages'} or, when
    the time budget ran out, {'stopped_in': stage name}."""
    s = cfg.sfbd
    if s is None:
        raise ConfigError("train_sfbd needs a config with an 'sfbd' section")
    out = Path(out_dir)
    state_path = out / STATE
    if state_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds an SFBD run; pass --resume to continue it or choose another --out")
    state = json.loads(state_path.read_text()) if state_path.exists() else {"stages": {}}
    if state.get("config_hash") not in (None, cfg.hash()):
        raise ValueError(f"--resume: {out} was run with a different config; use its own {out / 'config.yaml'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    data = PreparedDataset(data_dir)
    ids = slice_ids(data)
    clean, clean_idx, other_idx = clean_split(ids, s, str(data_dir))
    state.update({"config_hash": cfg.hash(), "data": str(Path(data_dir).resolve()), "clean_files": clean,
                  "clean_slices": len(clean_idx), "undersampled_slices": len(other_idx),
                  "files": len({_file_of(i) for i in ids})})
    deadline = None if minutes is None else time.monotonic() + 60 * minutes

    def save_state():
        atomic_write_text(state_path, json.dumps(state, indent=1, default=str), overwrite=True)

    def left() -> float | None:
        return None if deadline is None else max(0.0, (deadline - time.monotonic()) / 60)

    def run_train(name: str, steps: int, set_dir: Path, run_dir: Path, init: Path | None) -> bool:
        """One DSM stage; True when finished."""
        ck = run_dir / "checkpoint.pt"
        if ck.exists() and int(load_checkpoint(ck)["step"]) >= steps:
            return True
        stage_cfg = replace(cfg, name=f"{cfg.name}-{name}", train=replace(cfg.train, steps=steps))
        t0 = time.perf_counter()
        log(f"sfbd {name}: DSM on {set_dir} for {steps} steps")
        res = train(stage_cfg, set_dir, run_dir, resume=ck.exists(), device=device, progress=progress,
                    minutes=left(), tensorboard=tensorboard, init=None if ck.exists() else init)
        rec = state["stages"].setdefault(name, {"seconds": 0.0})
        rec["seconds"] += time.perf_counter() - t0
        rec["steps"] = int(res["step"])
        save_state()
        return int(res["step"]) >= steps

    # pretraining (or the given init prior)
    if s.init is not None:
        prev = resolve_checkpoint(s.init)
        ck = load_checkpoint(prev)
        _check_matrix("init", (ck.get("data") or {}).get("image_shape"), data.image_shape, prev)
        if TrainConfig.from_dict(ck["config"], legacy=True).net != cfg.net:
            raise ConfigError(f"sfbd stage init: {prev} has another network (net) than this config; fine-tuning "
                              "needs the same one")
    else:
        clean_dir = out / "clean"
        if not (clean_dir / MANIFEST).exists():
            write_set(data, clean_dir, clean_idx, {}, {"stage": "clean", "clean_files": clean})
        if not run_train("pretrain", s.pretrain_steps, clean_dir, out / "pretrain", None):
            return {"stopped_in": "pretrain"}
        prev = out / "pretrain" / "checkpoint.pt"
    for k in range(1, s.rounds + 1):
        rdir = out / "rounds" / str(k)
        set_dir = rdir / "data"
        later = [j for j in range(k + 1, s.rounds + 1) if (out / "rounds" / str(j) / "data" / MANIFEST).exists()]
        if not (set_dir / MANIFEST).exists() and later:
            raise ConfigError(f"sfbd stage round {k}: {set_dir} is missing but round(s) {later} exist; remove them "
                              "or restore the round")
        if (set_dir / MANIFEST).exists():
            _check_matrix(f"round {k}", read_manifest(set_dir).get("image_shape"), data.image_shape, set_dir)
        else:
            t0 = time.perf_counter()
            log(f"sfbd round {k}: backward step ({len(other_idx)} undersampled scans, model {prev})")
            est, record = backward_step(prev, data, other_idx, s, k, device, progress)
            write_set(data, set_dir, clean_idx + other_idx, est, {**record, "stage": f"round {k}",
                                                                 "clean_files": clean})
            state["stages"][f"round {k} backward"] = {"seconds": time.perf_counter() - t0,
                                                      "network_calls_per_scan": record["network_calls_per_scan"]}
            save_state()
            if deadline is not None and time.monotonic() > deadline:
                return {"stopped_in": f"round {k} (after the backward step)"}
        if not run_train(f"round {k}", s.steps_per_round, set_dir, rdir / "train", prev):
            return {"stopped_in": f"round {k}"}
        prev = rdir / "train" / "checkpoint.pt"
    final = load_checkpoint(prev)
    final["config"] = cfg.to_dict()
    final["sfbd"] = {"clean_files": clean, "rounds": s.rounds, "stages": state["stages"]}
    save_checkpoint(out / "checkpoint.pt", final)
    state["finished"] = True
    save_state()
    return {"step": int(final["step"]), "checkpoint": out / "checkpoint.pt", "stages": state["stages"]}
