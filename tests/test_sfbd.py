"""SFBD (recon/sfbd.py): stages, auditable round sets, the clean-image guarantee, resume and refusals."""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mri_diffusion.config import ConfigError, TrainConfig
from mri_diffusion.data import PreparedDataset
from mri_diffusion.train.checkpoint import load_checkpoint, load_denoiser
from recon.sfbd import clean_split, slice_ids, train_sfbd

from .conftest import make_prepared, write_multicoil
from .test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("sfbd"), files=3, slices=2, h=32, w=40)


def sfbd_cfg(**sfbd):
    d = TrainConfig.from_yaml(TINY).to_dict()
    d["loss"] = "dsm"
    d["train"]["steps"] = 2
    d["sfbd"] = {"clean_files": ["vol_0.h5"], "pretrain_steps": 2, "rounds": 2, "steps_per_round": 2,
                 "sampler_steps": 2, "batch_slices": 3, **sfbd}
    return TrainConfig.from_dict(d)


def _run(cfg, data, out, **kw):
    return train_sfbd(cfg, data, out, progress=False, tensorboard=False, log=lambda m: None, **kw)


def test_sfbd_stages_and_round_sets(prepared, tmp_path):
    cfg = sfbd_cfg()
    res = _run(cfg, prepared, tmp_path / "run")
    out = tmp_path / "run"
    src = PreparedDataset(prepared, with_targets=True)
    ids = slice_ids(src)
    clean = PreparedDataset(out / "clean", with_targets=True)
    assert len(clean) == 2 and all(clean[i]["id"].startswith("vol_0.h5:") for i in range(2))
    for k in (1, 2):
        rs = PreparedDataset(out / "rounds" / str(k) / "data", with_targets=True)
        man = rs.manifest["sfbd"]
        assert man["round"] == k and man["scans"] == 4 and man["network_calls_per_scan"] > 0
        assert man["clean_files"] == ["vol_0.h5"] and man["estimate"] == "one posterior sample"
        assert len(rs) == 6
        for i in range(len(rs)):
            it = rs[i]
            j = ids.index(it["id"])
            same = torch.equal(it["target"], src[j]["target"])
            assert same == it["id"].startswith("vol_0.h5:")  # clean targets copied, the others are draws
            assert torch.isfinite(torch.view_as_real(it["target"])).all()
            assert torch.equal(it["kspace"], src[j]["kspace"]) and torch.equal(it["maps"], src[j]["maps"])
    r1 = PreparedDataset(out / "rounds" / "1" / "data", with_targets=True)
    r2 = PreparedDataset(out / "rounds" / "2" / "data", with_targets=True)
    assert not torch.equal(r1[5]["target"], r2[5]["target"])  # a new draw (new model, new seed) per round
    state = json.loads((out / "sfbd.json").read_text())
    assert set(state["stages"]) == {"pretrain", "round 1 backward", "round 1", "round 2 backward", "round 2"}
    assert state["finished"] and state["clean_files"] == ["vol_0.h5"]
    assert all(v["seconds"] > 0 for v in state["stages"].values())
    net, c, ck = load_denoiser(res["checkpoint"])
    assert c.sfbd is not None and ck["sfbd"]["rounds"] == 2
    # fine-tuning starts from the previous stage: round 1's run began from the pretrained weights
    assert load_checkpoint(out / "rounds" / "1" / "train" / "checkpoint.pt")["step"] == 2


def test_sfbd_never_reads_the_undersampled_scans_targets(prepared, tmp_path):
    """Targets of the non-clean files replaced by NaN: the run is bit-identical."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(prepared, poisoned)
    for f in sorted((poisoned / "targets").glob("*.h5")):
        with h5py.File(f, "r+") as h:
            ids = [i.decode() if isinstance(i, bytes) else i for i in h["ids"][()]]
            t = h["target"][()]
            for n, i in enumerate(ids):
                if not i.startswith("vol_0.h5:"):
                    t[n] = np.nan
            h["target"][...] = t
    cfg = sfbd_cfg(rounds=1)
    a = _run(cfg, prepared, tmp_path / "a")
    b = _run(cfg, poisoned, tmp_path / "b")
    wa, wb = load_checkpoint(a["checkpoint"])["ema"], load_checkpoint(b["checkpoint"])["ema"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with h5py.File(tmp_path / "b" / "rounds" / "1" / "data" / "targets" / "shard_00000.h5") as h:
        assert np.isfinite(h["target"][()]).all()


def test_sfbd_resumes_and_refuses_mismatches(prepared, tmp_path):
    cfg = sfbd_cfg()
    out = tmp_path / "run"
    _run(cfg, prepared, out)
    before = load_checkpoint(out / "checkpoint.pt")["ema"]
    with pytest.raises(FileExistsError, match="--resume"):
        _run(cfg, prepared, out)
    # an interrupted run that lost round 2: resume redoes it, deterministically
    shutil.rmtree(out / "rounds" / "2")
    (out / "checkpoint.pt").unlink()
    _run(cfg, prepared, out, resume=True)
    after = load_checkpoint(out / "checkpoint.pt")["ema"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a missing round under a later one is refused naming the stage
    shutil.rmtree(out / "rounds" / "1" / "data")
    with pytest.raises(ConfigError, match="stage round 1.*missing"):
        _run(cfg, prepared, out, resume=True)
    with pytest.raises(ValueError, match="different config"):
        _run(sfbd_cfg(rounds=3), prepared, out, resume=True)
    with pytest.raises(ConfigError, match="vol_9.h5 not in the prepared set"):
        _run(sfbd_cfg(clean_files=["vol_9.h5"]), prepared, tmp_path / "x")
    with pytest.raises(ConfigError, match="every file"):
        _run(sfbd_cfg(clean_files=["vol_0.h5", "vol_1.h5", "vol_2.h5"]), prepared, tmp_path / "y")


def test_sfbd_from_an_init_prior_checks_matrix_and_network(prepared, tmp_path):
    from data_prep.prepare import PrepConfig, prepare
    from mri_diffusion.train.loop import train

    cfg = sfbd_cfg(rounds=1)
    good = _run(cfg, prepared, tmp_path / "base")["checkpoint"]
    res = _run(sfbd_cfg(rounds=1, init=str(good), clean_files=[], pretrain_steps=0), prepared, tmp_path / "init")
    assert not (tmp_path / "init" / "pretrain").exists() and res["checkpoint"].exists()
    # a prior at another matrix is refused naming the stage
    src = tmp_path / "other"
    src.mkdir()
    write_multicoil(src / "o.h5", slices=1, coils=4, h=24, w=40, noise=0.02)
    prepare([src], tmp_path / "oset", PrepConfig(acceleration=3.0, center_fraction=0.16), progress=False)
    d = cfg.to_dict()
    d.pop("sfbd")
    train(TrainConfig.from_dict(d), tmp_path / "oset", tmp_path / "orun", progress=False, tensorboard=False)
    with pytest.raises(ConfigError, match="stage init.*matrix"):
        _run(sfbd_cfg(init=str(tmp_path / "orun" / "checkpoint.pt"), clean_files=[], pretrain_steps=0), prepared,
             tmp_path / "z")


def test_sfbd_config_rules(prepared):
    base = TrainConfig.from_yaml(TINY).to_dict()
    with pytest.raises(ConfigError, match="use dsm"):
        TrainConfig.from_dict({**base, "loss": "gsure", "sfbd": {"clean_fraction": 0.2}})
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig.from_dict({**base, "loss": "dsm", "sfbd": {"clean_fraction": 0.2, "clean_files": ["a.h5"]}})
    with pytest.raises(ConfigError, match="sfbd.rounds"):
        TrainConfig.from_dict({**base, "loss": "dsm", "sfbd": {"clean_fraction": 0.2, "rounds": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({**base, "loss": "dsm", "sfbd": {"clean_fraction": 0.2, "round": 2}})
    cfg = TrainConfig.from_dict({**base, "loss": "dsm", "sfbd": {"clean_fraction": "0.34"}})
    assert cfg.sfbd.clean_fraction == pytest.approx(0.34)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round trip (checkpoints store the dict)
    ids = slice_ids(PreparedDataset(prepared))
    clean, ci, oi = clean_split(ids, cfg.sfbd, "set")
    assert len(clean) == 1 and len(ci) == 2 and len(oi) == 4 and not set(ci) & set(oi)
    plain = TrainConfig.from_yaml(TINY)
    assert "sfbd" not in plain.to_dict()  # plain priors keep their dict and hash


def test_sfbd_through_the_cli(prepared, tmp_path):
    from mri_diffusion.cli import main

    cfg = sfbd_cfg(rounds=1)
    path = tmp_path / "sfbd.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    r = CliRunner().invoke(main, ["train", "--config", str(path), "--data", str(prepared), "--out",
                                  str(tmp_path / "run"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "checkpoint.pt").exists() and "sfbd round 1" in r.output


def test_draw_audit_closed_form():
    """benchmarks/sfbd_draws.audit on a draw whose error is known: a plane wave on one unmeasured phase-encode line
    and one on a measured line with the energy of the noise. PSNR, the measured share and the per-line ratio
    follow from Parseval; clean files are skipped."""
    import math

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sfbd_draws import audit

    H, W = 16, 32
    truth = torch.zeros(H, W, dtype=torch.complex64)
    truth[4:12, 8:24] = 2.0
    mask = torch.zeros(1, 1, W)
    mask[..., ::2] = 1  # even columns measured
    sigma = 0.05
    col = torch.arange(W)
    # a plane wave along the readout axis at frequency 3 (odd: unmeasured) and 4 (even: measured); the centred
    # FFT puts column frequency f at index W/2 + f
    un = 0.1 * torch.exp(2j * math.pi * 3 * col / W).to(torch.complex64).expand(H, W)
    e_meas = sigma ** 2 * H  # the noise energy of one line: H entries
    me = math.sqrt(e_meas / (H * W)) * torch.exp(2j * math.pi * 4 * col / W).to(torch.complex64).expand(H, W)
    draw = truth + un + me
    items = [{"id": "a.h5:0", "target": draw, "mask": mask, "noise_std": torch.tensor(sigma)},
             {"id": "clean.h5:0", "target": truth + 5, "mask": mask, "noise_std": torch.tensor(sigma)}]
    out = audit(items, {"a.h5:0": truth, "clean.h5:0": truth}, {"clean.h5"})
    assert out["slices"] == 1
    e_un = 0.01 * H * W
    mse = (e_un + e_meas) / (H * W)
    assert out["psnr"][0] == pytest.approx(10 * math.log10(4.0 / mse), abs=1e-6)
    assert out["measured_share"] == pytest.approx(e_meas / (e_un + e_meas), rel=1e-6)
    # the error energy averaged over the W/2 measured lines, over the noise energy of one line
    assert out["measured_error_over_noise"] == pytest.approx(1 / (W // 2), rel=1e-6)
