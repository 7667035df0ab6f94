"""Views (partial isometries), view datasets, the view-composed denoiser and its staged training.

Closed-form checks: V V^H = I and the adjoint for every view; white noise stays white with the same level
in the view (Monte-Carlo covariance); a composed denoiser built from exact k-space Wiener view denoisers
equals the exact Wiener denoiser on the views' k-space and the identity elsewhere; overlapping identity
views compose to the identity (partition of unity); the regulariser adds exactly weight * mean|F|^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mri_diffusion.config import ConfigError, TrainConfig
from mri_diffusion.nn import EDMDenoiser, NetConfig
from mri_diffusion.nn.composed import ViewComposedDenoiser
from mri_diffusion.physics import Scale, adjoint_error, fft2c, ifft2c
from mri_diffusion.physics.views import LowResView, check_partial_isometry, parse_view, view_shape_for

from .conftest import write_multicoil

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def crandn(*shape, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g)).to(dtype)


VIEWS = [((32, 32), (16, 16)), ((32, 32), (8, 8)), ((33, 31), (17, 15)), ((32, 30), (32, 6)), ((20, 24), (9, 24))]


@pytest.mark.parametrize("full,view", VIEWS)
def test_view_adjoint_and_partial_isometry(full, view):
    V = LowResView(full, view)
    x, y = crandn(2, *full, seed=1), crandn(2, *view, seed=2)
    assert adjoint_error(V, x, y) < 1e-5
    assert check_partial_isometry(V, full) < 1e-5
    # V^H V is the orthogonal projection onto the view's k-space support
    p = ifft2c(fft2c(x) * V.kspace_support())
    assert torch.allclose(V.adjoint(V(x)), p, atol=1e-5)


def test_view_keeps_white_noise_white():
    """V (sigma n) = sigma n' with n' white: per-pixel variance 2 sigma^2, no correlations (Monte Carlo)."""
    V, sigma, N = LowResView((12, 12), (6, 6)), 0.7, 20000
    n = crandn(N, 12, 12, seed=3) * sigma
    z = V(n).reshape(N, -1)
    cov = (z.T.conj() @ z) / N  # (36, 36) complex
    se = 2 * sigma**2 / np.sqrt(N)
    assert torch.allclose(cov.diagonal().real, torch.full((36,), 2 * sigma**2), atol=6 * se)
    off = cov - torch.diag(cov.diagonal())
    assert float(off.abs().max()) < 6 * se
    # and the two real channels each carry sigma^2
    assert abs(float(z.real.var()) - sigma**2) < 6 * sigma**2 / np.sqrt(N * 36)


def test_non_isometries_are_refused():
    V = LowResView((16, 16), (8, 8))
    with pytest.raises(ValueError, match="not a partial isometry"):
        check_partial_isometry(Scale(V, 2.0), (16, 16))
    with pytest.raises(ValueError, match="must fit"):
        LowResView((16, 16), (20, 8))
    for bad in ("lowres:1.5", "lowres:x", "sinc:0.5", "acs:3"):
        with pytest.raises(ValueError):
            parse_view(bad)
    assert parse_view("lowres:0.25") == ("lowres", 0.25) and parse_view("acs") == ("acs", None)


class Wiener(nn.Module):
    """Exact denoiser of x ~ CN(0, F^H diag(2 c) F) (per real channel variance c(k)) at level sigma."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = c
        self.sigma_data = 0.5

    def forward(self, x, sigma):
        s2 = torch.as_tensor(sigma).reshape(-1, 1, 1) ** 2
        return ifft2c(fft2c(x) * (self.c / (self.c + s2)))


def test_composed_wiener_is_exact_on_the_view_and_identity_elsewhere():
    H = W = 16
    ky, kx = torch.meshgrid(torch.arange(H) - H // 2, torch.arange(W) - W // 2, indexing="ij")
    c = 1.0 / (1.0 + 0.1 * (ky**2 + kx**2).float())  # a decaying k-space spectrum
    V = LowResView((H, W), (8, 8))
    # the view of this Gaussian is Gaussian with the cropped spectrum: its exact denoiser is Wiener on the crop
    model = ViewComposedDenoiser([("lr", (0.5, 0.5), Wiener(V.crop_kspace(c)))], None, (H, W))
    x, sigma = crandn(3, H, W, seed=5), torch.tensor([0.1, 0.5, 2.0])
    d = model(x, sigma)
    s = V.kspace_support()
    full_wiener = ifft2c(fft2c(x) * (c / (c + sigma.reshape(-1, 1, 1) ** 2)))
    expect = ifft2c(fft2c(full_wiener) * s + fft2c(x) * (1 - s))
    assert torch.allclose(d, expect, atol=1e-5)


def test_overlapping_views_form_a_partition_of_unity():
    """Identity view denoisers compose to the identity, however the views overlap."""
    ident = type("Ident", (nn.Module,), {"forward": lambda self, x, s: x, "sigma_data": 0.5})
    model = ViewComposedDenoiser([("lr", (0.5, 0.5), ident()), ("acs", (1.0, 0.125), ident())], None, (32, 32))
    x = crandn(2, 32, 32, seed=6)
    assert torch.allclose(model(x, torch.tensor([0.3, 1.0])), x, atol=1e-5)
    w = model.weights((32, 32), "cpu")
    assert torch.allclose(w["lr"] + w["acs"], torch.clamp(w["lr"] + w["acs"], max=1.0))
    assert float((w["lr"] + w["acs"]).max()) == 1.0 and float(w["lr"][16, 16]) == 0.5


def test_residual_starts_at_zero_and_regulariser_adds_weight_times_energy():
    from mri_diffusion.losses import make_loss
    from mri_diffusion.config import LossOptions
    from mri_diffusion.types import MRIBatch
    from mri_diffusion.physics.masks import make_sampler

    net = NetConfig.from_dict({"preset": "tiny"})
    view = EDMDenoiser(net)
    model = ViewComposedDenoiser([("lr", (0.5, 0.5), view)], net, (16, 16))
    x, s = crandn(2, 16, 16, seed=7), torch.tensor([0.2, 1.0])
    assert torch.allclose(model.residual(x, s), torch.zeros_like(x))
    assert all(not p.requires_grad for p in model.views.parameters())
    torch.manual_seed(0)
    nn.init.normal_(model.residual.net.conv_out.weight, std=0.05)
    mask = make_sampler("random", 2.0, 0.25).sample((16, 16), seed=1)
    maps = torch.ones(2, 1, 16, 16, dtype=torch.complex64)
    batch = MRIBatch(fft2c(x)[:, None] * mask, mask.expand(2, 1, 1, 16), maps, torch.full((2, 1, 1, 16), 0.5),
                     torch.full((2,), 0.01))
    opts = LossOptions(inverse_iters=3)
    l0 = make_loss("gsure", opts, 0.5, 0.0)(model, batch, torch.Generator().manual_seed(1))
    with model.recording() as rec:
        make_loss("gsure", opts, 0.5, 0.0)(model, batch, torch.Generator().manual_seed(1))
    l1 = make_loss("gsure", opts, 0.5, 0.3)(model, batch, torch.Generator().manual_seed(1))
    assert len(rec) == 2 and float(rec[0].detach().min()) > 0  # h and the finite-difference call
    assert torch.allclose(l1 - l0, 0.3 * rec[0], rtol=1e-4, atol=1e-7)
    with pytest.raises(RuntimeError, match="view-composed"):
        make_loss("gsure", opts, 0.5, 0.3)(view, batch, torch.Generator().manual_seed(1))


def _views_yaml(tmp: Path, view_data: Path, spec: str = "lowres:0.5", weight: float = 0.1,
                residual: bool = True) -> Path:
    p = tmp / f"views_{spec.replace(':', '_')}_{weight}_{residual}.yaml"
    p.write_text(f"""
name: views_test
loss: gsure
net: {{preset: tiny}}
loss_options: {{inverse_iters: 5}}
optim: {{lr: 1.0e-3, warmup_steps: 0}}
train: {{steps: 2, batch_size: 2, seed: 0, ema_half_life: 2, log_every: 1, ckpt_every: 2}}
residual: {str(residual).lower()}
residual_weight: {weight}
views:
  - name: lr
    view: "{spec}"
    data: {view_data}
    config:
      name: view_lr
      loss: dsm
      net: {{preset: tiny}}
      optim: {{lr: 1.0e-3, warmup_steps: 0}}
      train: {{steps: 3, batch_size: 2, seed: 0, ema_half_life: 2, log_every: 1, ckpt_every: 3}}
""")
    return p


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Full-resolution 3x-undersampled set + low-res view sets (cropped and given as low-res files) + ACS."""
    from data_prep.prepare import PrepConfig, prepare

    d = tmp_path_factory.mktemp("views")
    (d / "src").mkdir()
    (d / "lowsrc").mkdir()
    for i in range(2):
        write_multicoil(d / "src" / f"vol_{i}.h5", slices=2, coils=4, h=32, w=32, noise=0.01, seed=10 * i)
    write_multicoil(d / "src2.h5", slices=2, coils=4, h=32, w=32, noise=0.01, seed=30)
    # a low-resolution scan (16 x 16 k-space centre of another volume) given as its own file
    import h5py

    with h5py.File(d / "src2.h5") as f:
        k = f["kspace"][()][..., 8:24, 8:24]
    with h5py.File(d / "lowsrc" / "low_0.h5", "w") as f:
        f.create_dataset("kspace", data=k)
    cfg = dict(acceleration=3.0, center_fraction=0.25, shard_size=4)
    prepare([d / "src"], d / "full", PrepConfig(**cfg), progress=False)
    prepare([d / "src"], d / "crop", PrepConfig(**cfg, view="lowres:0.5"), progress=False)
    prepare([d / "lowsrc"], d / "low", PrepConfig(**cfg, view="lowres:0.5", full_matrix=(32, 32)), progress=False)
    prepare([d / "src"], d / "acs", PrepConfig(**cfg, view="acs"), progress=False)
    return d


def test_view_sets_match_the_view_of_the_full_images(sets):
    from mri_diffusion.data import PreparedDataset

    full = PreparedDataset(sets / "full", with_targets=True)
    crop = PreparedDataset(sets / "crop", with_targets=True)
    assert crop.image_shape == (16, 16) and crop.manifest["view"]["full_shape"] == [32, 32]
    V = LowResView((32, 32), (16, 16))
    for i in range(len(crop)):
        a, b = full[i], crop[i]
        assert a["id"] == b["id"]
        # same scale rule (ACS of the full scans, / amplitude factor): the view image is V of the full image
        assert abs(float(b["scale"]) / float(a["scale"]) - 1) < 0.05
        va = V(torch.as_tensor(a["target"])[None])[0].abs()
        assert float((va - torch.as_tensor(b["target"]).abs()).norm() / va.norm()) < 0.05
        assert torch.all(torch.as_tensor(b["mask"]) == 1)
    low = PreparedDataset(sets / "low", with_targets=True)
    assert low.image_shape == (16, 16) and low.manifest["view"]["view_shape"] == [16, 16]
    acs = PreparedDataset(sets / "acs", with_targets=True)
    assert acs.image_shape == (32, 8) and acs.manifest["view"]["fraction"] == [1.0, 0.25]


def test_view_prep_refuses_mismatched_files(sets, tmp_path):
    from data_prep.fastmri_h5 import DataError
    from data_prep.prepare import PrepConfig, prepare

    with pytest.raises(DataError, match="neither the full matrix"):
        prepare([sets / "lowsrc"], tmp_path / "x", PrepConfig(view="lowres:0.25", full_matrix=(32, 32)),
                progress=False)
    with pytest.raises(ValueError):
        PrepConfig(view="lowres:2")


def test_views_config_errors_name_the_key(tmp_path):
    for body, key in [("views: [{name: a, view: 'lowres:0.5', config: {loss: dsm}}]", "give 'data'"),
                      ("views: [{name: a, view: 'blur', data: x, config: {}}]", r"views\[0\].view"),
                      ("views: [{name: a, view: 'acs', data: x, config: {}, colour: 1}]", "views.0..colour"),
                      ("views: [{name: a, view: 'acs', data: x}]", r"views\[0\].config is required")]:
        p = tmp_path / "c.yaml"
        p.write_text(body + "\n")
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_yaml(p)
    assert "views" not in TrainConfig().to_dict()  # plain priors keep their dict and hash
    cfg = TrainConfig.from_yaml(ROOT / "configs" / "train" / "views_lowres.yaml")
    assert cfg.views[0].view == "lowres:0.5" and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_views_then_residual_one_checkpoint_plugs_into_recon(sets, tmp_path):
    from mri_diffusion.cli import main
    from mri_diffusion.train import CheckpointError, load_checkpoint, load_denoiser, save_checkpoint
    from mri_diffusion.train.stages import train_prior

    cfg = TrainConfig.from_yaml(_views_yaml(tmp_path, sets / "low"))
    res = train_prior(cfg, sets / "full", tmp_path / "run", progress=False, tensorboard=False)
    assert res["step"] == 2 and (tmp_path / "run" / "views" / "lr" / "checkpoint.pt").exists()
    net, rcfg, ck = load_denoiser(res["checkpoint"])
    assert isinstance(net, ViewComposedDenoiser) and rcfg.views[0].fraction == (0.5, 0.5)
    x = crandn(1, 32, 32, seed=8)
    assert net(x, torch.tensor([0.5])).shape == (1, 32, 32)
    assert net(crandn(1, 40, 36, seed=9), torch.tensor([0.5])).shape == (1, 40, 36)  # any matrix
    # re-running reuses the finished view stage; a finished run is not overwritten
    with pytest.raises(FileExistsError):
        train_prior(cfg, sets / "full", tmp_path / "run", progress=False, tensorboard=False)
    # the checkpoint is a plain D(x, sigma) for mridiff recon
    r = CliRunner().invoke(main, ["recon", str(sets / "src" / "vol_0.h5"), "--out", str(tmp_path / "rec"),
                                  "--method", "diffusion", "--checkpoint", str(res["checkpoint"]), "--steps", "3",
                                  "--samples", "2", "--max-slices", "1", "-R", "3", "--center-fraction", "0.25",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    # a checkpoint missing a stage is refused, naming it
    bad = load_checkpoint(res["checkpoint"])
    for key in ("model", "ema"):
        bad[key] = {k: v for k, v in bad[key].items() if not k.startswith("residual.")}
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in bad.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="stage 'residual'"):
        load_denoiser(tmp_path / "bad.pt")
    # views alone: no residual, nothing to train, still one checkpoint
    alone = TrainConfig.from_yaml(_views_yaml(tmp_path, sets / "low", residual=False))
    alone = TrainConfig.from_dict({**alone.to_dict(), "views": [{**alone.views[0].to_dict(), "data": None,
                                   "checkpoint": str(tmp_path / "run" / "views" / "lr" / "checkpoint.pt")}]})
    res2 = train_prior(alone, sets / "full", tmp_path / "alone", progress=False, tensorboard=False)
    net2, _, _ = load_denoiser(res2["checkpoint"])
    assert net2.residual is None


def test_view_model_must_match_the_config_and_matrix(sets, tmp_path):
    from mri_diffusion.train.stages import train_prior

    ok = tmp_path / "ok"
    train_prior(TrainConfig.from_yaml(_views_yaml(tmp_path, sets / "low")), sets / "full", ok, progress=False,
                tensorboard=False)
    vck = str(ok / "views" / "lr" / "checkpoint.pt")
    other = TrainConfig.from_yaml(_views_yaml(tmp_path, sets / "low", spec="lowres:0.25"))
    other = TrainConfig.from_dict({**other.to_dict(), "views": [{**other.views[0].to_dict(), "checkpoint": vck}]})
    with pytest.raises(ConfigError, match="trained on view 'lowres:0.5'"):
        train_prior(other, sets / "full", tmp_path / "o", progress=False, tensorboard=False)
    acs = TrainConfig.from_yaml(_views_yaml(tmp_path, sets / "acs", spec="acs"))
    with pytest.raises(ConfigError, match="residual's data"):  # an ACS view of 32x32 scans vs a 16x16 set
        train_prior(acs, sets / "crop", tmp_path / "m", progress=False, tensorboard=False)


def test_view_shape_for_rounds_and_clamps():
    assert view_shape_for((128, 128), (0.5, 0.5)) == (64, 64)
    assert view_shape_for((128, 128), (1.0, 10 / 128)) == (128, 10)
    assert view_shape_for((7, 7), (0.01, 1.0)) == (1, 7)
