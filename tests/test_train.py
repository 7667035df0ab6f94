"""Training: config errors, determinism and exact resume, never reading clean images, safe checkpoints, DDP."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mri_diffusion.cli import main
from mri_diffusion.config import ConfigError, TrainConfig
from mri_diffusion.train import CheckpointError, load_checkpoint, load_denoiser
from mri_diffusion.train.loop import TrainingError, train

from .conftest import make_prepared, write_multicoil

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prep"))


def tiny(**over):
    cfg = TrainConfig.from_yaml(TINY)
    d = cfg.to_dict()
    for k, v in over.items():
        sec, key = k.split(".")
        d[sec][key] = v
    return TrainConfig.from_dict(d)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("loss: gsure\ntrain: {steps: 5, batchsize: 2}\n")
    with pytest.raises(ConfigError, match="train.batchsize"):
        TrainConfig.from_yaml(bad)
    bad.write_text("loss: gsure\noptim: {lr: -1}\n")
    with pytest.raises(ConfigError, match="optim.lr"):
        TrainConfig.from_yaml(bad)
    bad.write_text("loss: magic\n")
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig.from_yaml(bad)
    bad.write_text("net: {preset: tiny, widht: 3}\n")
    with pytest.raises(ConfigError, match="widht"):
        TrainConfig.from_yaml(bad)
    shipped = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert len(shipped) >= 15
    for path in shipped:  # every shipped recipe is a valid config
        TrainConfig.from_yaml(path)


def test_retired_cg_iters_is_an_error_in_configs_but_old_checkpoints_still_load(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("loss: gsure\nloss_options: {cg_iters: 10}\n")
    with pytest.raises(ConfigError, match="loss_options.cg_iters was retired: use loss_options.inverse_iters"):
        TrainConfig.from_yaml(bad)
    old = {"loss": "gsure", "loss_options": {"cg_iters": 10, "divergence": "fd"}}
    assert TrainConfig.from_dict(old, legacy=True).loss_options.divergence == "fd"
    from mri_diffusion.train.checkpoint import load_denoiser, resolve_checkpoint  # the shipped prior used cg_iters

    _, cfg, _ = load_denoiser(resolve_checkpoint("builtin"))
    assert cfg.loss in ("gsure", "ambient", "dsm")


def test_dry_run_prints_resolved_config():
    r = CliRunner().invoke(main, ["train", "--config", str(TINY), "--dry-run", "--set", "train.steps=3"])
    assert r.exit_code == 0 and "steps: 3" in r.output and "base_channels: 8" in r.output


def test_resume_continues_exactly(prepared, tmp_path):
    full = train(tiny(), prepared, tmp_path / "a", progress=False, tensorboard=False)
    part = train(tiny(**{"train.steps": 3}), prepared, tmp_path / "b", progress=False, tensorboard=False)
    rest = train(tiny(), prepared, tmp_path / "b", resume=True, progress=False, tensorboard=False)
    assert part["losses"] + rest["losses"] == full["losses"]
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert (tmp_path / "b" / "config.yaml").exists() and (tmp_path / "b" / "log.csv").read_text().count("\n") == 7
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(), prepared, tmp_path / "a", progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="different config"):
        train(tiny(**{"optim.lr": 0.5}), prepared, tmp_path / "a", resume=True, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def prepared_full(tmp_path_factory):
    """Fully sampled (-R 1) noisy k-space: what the tweedie loss trains on."""
    from data_prep.prepare import PrepConfig, prepare

    d = tmp_path_factory.mktemp("prep_full")
    src = d / "src"
    src.mkdir()
    write_multicoil(src / "vol_0.h5", slices=3, coils=4, h=40, w=48, noise=0.02, seed=0)
    prepare([src], d / "set", PrepConfig(acceleration=1.0, shard_size=4), progress=False)
    return d / "set"


@pytest.mark.parametrize("loss", ["gsure", "ambient", "tweedie"])
def test_self_supervised_training_never_reads_targets(request, tmp_path, loss):
    prepared = request.getfixturevalue("prepared_full" if loss == "tweedie" else "prepared")
    stripped = tmp_path / "stripped"
    shutil.copytree(prepared, stripped)
    shutil.rmtree(stripped / "targets")
    cfg = tiny(**{"train.steps": 3})
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "loss": loss})
    r1 = train(cfg, prepared, tmp_path / "with", progress=False, tensorboard=False)
    r2 = train(cfg, stripped, tmp_path / "without", progress=False, tensorboard=False)
    assert r1["losses"] == r2["losses"]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in ("with", "without"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dsm_needs_targets(prepared, tmp_path):
    stripped = tmp_path / "s"
    shutil.copytree(prepared, stripped)
    shutil.rmtree(stripped / "targets")
    cfg = TrainConfig.from_dict({**tiny().to_dict(), "loss": "dsm"})
    with pytest.raises((ValueError, FileNotFoundError), match="targets"):
        train(cfg, stripped, tmp_path / "o", progress=False, tensorboard=False)
    train(TrainConfig.from_dict({**tiny(**{"train.steps": 2}).to_dict(), "loss": "dsm"}), prepared, tmp_path / "ok",
          progress=False, tensorboard=False)


def test_nan_loss_stops_and_keeps_last_checkpoint(prepared, tmp_path, monkeypatch):
    import mri_diffusion.train.loop as loop

    real = loop.make_loss

    def poisoned(name, opts, sd, *rest):
        fn = real(name, opts, sd, *rest)
        calls = {"n": 0}

        def f(d, b, g):
            calls["n"] += 1
            out = fn(d, b, g)
            return out * float("nan") if calls["n"] == 5 else out

        return f

    monkeypatch.setattr(loop, "make_loss", poisoned)
    with pytest.raises(TrainingError, match=r"step 4 \(slices vol_"):
        train(tiny(), prepared, tmp_path / "n", progress=False, tensorboard=False)
    assert load_checkpoint(tmp_path / "n" / "checkpoint.pt")["step"] == 3


def test_disk_full_during_checkpoint_keeps_previous(prepared, tmp_path, monkeypatch):
    train(tiny(**{"train.steps": 3}), prepared, tmp_path / "r", progress=False, tensorboard=False)
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        train(tiny(), prepared, tmp_path / "r", resume=True, progress=False, tensorboard=False)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_bad_checkpoints_are_refused(prepared, tmp_path):
    train(tiny(**{"train.steps": 1}), prepared, tmp_path / "c", progress=False, tensorboard=False)
    good = tmp_path / "c" / "checkpoint.pt"
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    ck = load_checkpoint(good)
    ck["config"]["net"]["base_channels"] = 16
    other = tmp_path / "other.pt"
    torch.save(ck, other)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_denoiser(other)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_sample_command_writes_png(prepared, tmp_path):
    train(tiny(**{"train.steps": 1}), prepared, tmp_path / "s", progress=False, tensorboard=False)
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(tmp_path / "s" / "checkpoint.pt"), "--n", "4",
                                  "--size", "24,20", "--steps", "4", "--out", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_torchrun_ddp_two_processes_gloo(prepared, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "mri_diffusion.cli", "train", "--config", str(TINY), "--data", str(prepared), "--out",
           str(tmp_path / "ddp"), "--set", "train.steps=2", "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["step"] == 2


def test_export_prior_and_builtin(prepared, tmp_path, monkeypatch):
    from mri_diffusion import priors
    from mri_diffusion.train import export_prior

    train(tiny(**{"train.steps": 2}), prepared, tmp_path / "e", progress=False, tensorboard=False)
    src = tmp_path / "e" / "checkpoint.pt"
    dst = export_prior(src, tmp_path / "prior.pt")
    assert dst.stat().st_size < src.stat().st_size
    a, _, _ = load_denoiser(src)
    b, cfg, ck = load_denoiser(dst)
    x = torch.randn(2, 24, 20, dtype=torch.complex64)
    s = torch.tensor([0.3, 1.0])
    with torch.no_grad():
        assert torch.equal(a(x, s), b(x, s))
    with pytest.raises(FileExistsError):
        export_prior(src, dst)
    monkeypatch.setitem(priors.SHIPPED, "builtin", tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="no shipped prior 'builtin'"):
        load_denoiser("builtin")
    monkeypatch.setitem(priors.SHIPPED, "builtin", dst)
    assert load_denoiser("builtin")[1].name == cfg.name
    assert load_denoiser("builtin-colin27")[1].loss == "gsure"  # the mismatched-prior fixture ships too


def test_each_torchrun_rank_takes_its_local_gpu(monkeypatch):
    """Under torchrun a CUDA run puts rank r on GPU LOCAL_RANK (a plain 'cuda' device is GPU 0 for all ranks);
    checked without GPUs by standing in for torch.distributed and torch.cuda.set_device."""
    import torch.distributed as td

    from mri_diffusion.train import loop

    chosen, groups = [], []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(td, "is_initialized", lambda: False)
    monkeypatch.setattr(td, "init_process_group", lambda backend: groups.append(backend))
    monkeypatch.setattr(td, "get_rank", lambda: 3)
    monkeypatch.setattr(td, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    dist, dev = loop._init_dist(torch.device("cuda"))
    assert dev == torch.device("cuda", 3) and chosen == [dev] and groups == ["nccl"]
    assert (dist.rank, dist.world, dist.main) == (3, 4, False)
    dist, dev = loop._init_dist(torch.device("cpu"))
    assert dev == torch.device("cpu") and groups[-1] == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert loop._init_dist(torch.device("cuda")) == (loop.Dist(), torch.device("cuda"))
