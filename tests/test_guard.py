"""Self-validation (recon/selfval.py) and the guarded reconstruction (recon/guard.py) against closed-form truth."""

import json
import math

import numpy as np
import pytest
import torch

from mri_diffusion.physics.fft import fft2c, ifft2c
from mri_diffusion.physics.masks import make_sampler
from recon import selfval
from recon.guard import GuardedRecon, GuardOptions
from recon.pipeline import SliceResult

from .conftest import phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def _maps(c, h, w):
    import sigpy.mri

    return torch.from_numpy(sigpy.mri.birdcage_maps((c, h, w)).astype(np.complex64))


def _normalised(maps):
    return maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))


def test_split_is_stratified_disjoint_and_outside_the_calibration_block():
    mask = make_sampler("random", 4.0, 0.08).sample((64, 96), 3)
    region = selfval.calibration_region(mask).reshape(-1)
    splits = selfval.split_mask(mask, 0.15, seed=11, folds=2)
    assert len(splits) == 2
    a, b = (s.val_mask.reshape(-1).bool() for s in splits)
    assert not (a & b).any()  # disjoint folds
    for s in splits:
        v = s.val_mask.reshape(-1).bool()
        assert (mask.reshape(-1).bool() | ~v).all() and not (v & region).any()  # measured, not calibration
        assert torch.equal(s.recon_mask + s.val_mask, mask)
        assert s.n_val == int(v.sum()) >= 2
        assert float(s.weights.sum()) == s.n_unmeasured == int((mask == 0).sum())
        r = selfval.radius((1, 96)).reshape(-1)[s.val_index.numpy()]
        assert np.all(np.diff(r) >= 0)  # one per stratum, nearest the centre first
    again = selfval.split_mask(mask, 0.15, seed=11, folds=2)
    assert all(torch.equal(x.val_mask, y.val_mask) for x, y in zip(splits, again))
    assert not torch.equal(selfval.split_mask(mask, 0.15, seed=12)[0].val_mask, splits[0].val_mask)
    only_centre = torch.zeros(1, 1, 96)
    only_centre[..., 44:52] = 1
    assert selfval.split_mask(only_centre, 0.15, 0) == []
    # more folds than a stratum has positions: capped at the smallest stratum (each fold one position per stratum)
    n = int(mask.reshape(-1).sum() - region.sum())
    many = selfval.split_mask(mask, 0.15, seed=11, folds=n)
    n_val = max(2, round(0.15 * n))
    assert len(many) == n // n_val and sum(s.n_val for s in many) == len(many) * n_val
    assert not (sum(s.val_mask for s in many) > 1).any()
    m2 = make_sampler("poisson", 4.0).sample((48, 48), 0)
    s2 = selfval.split_mask(m2, 0.1, 0)[0]
    assert not (s2.val_mask.bool() & selfval.calibration_region(m2)).any() and s2.n_val >= 2


def test_cv_splits_hold_out_every_line_once_balanced_in_radius():
    for shape, sampler in (((1, 128), make_sampler("random", 4.0, 0.08)), ((48, 48), make_sampler("poisson", 4.0))):
        mask = sampler.sample(shape, 5)
        region = selfval.calibration_region(mask).reshape(-1)
        cand = mask.reshape(-1).bool() & ~region
        splits = selfval.cv_splits(mask, 5, seed=3)
        assert len(splits) == 5
        held = torch.stack([s.val_mask.reshape(-1) for s in splits])
        assert torch.equal(held.sum(0), cand.to(held.dtype))  # every candidate exactly once, nothing else
        sizes = [s.n_val for s in splits]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == int(cand.sum())
        r = selfval.radius(tuple(mask.shape[-2:])).reshape(-1)
        order = np.sort(r[cand.numpy()])
        for f, s in enumerate(splits):
            assert torch.equal(s.recon_mask + s.val_mask, mask)
            assert float(s.weights.sum()) == s.n_unmeasured == int((mask == 0).sum())
            rv = r[s.val_index.numpy()]
            assert np.all(np.diff(rv) >= 0)
            # one position per stratum of 5 consecutive radii: the j-th held-out radius lies in stratum j
            assert all(order[5 * j] <= x <= order[min(5 * j + 4, len(order) - 1)] for j, x in enumerate(rv))
        again = selfval.cv_splits(mask, 5, seed=3)
        assert all(torch.equal(x.val_mask, y.val_mask) for x, y in zip(splits, again))
        assert not all(torch.equal(x.val_mask, y.val_mask) for x, y in zip(splits, selfval.cv_splits(mask, 5, 4)))
    centre = torch.zeros(1, 1, 96)
    centre[..., 40:56] = 1
    centre[..., [2, 90]] = 1
    loo = selfval.cv_splits(centre, 5, 0)  # 2 lines outside the calibration block: leave-one-out
    assert len(loo) == 2 and [s.n_val for s in loo] == [1, 1]
    centre[..., 2] = 0
    assert selfval.cv_splits(centre, 5, 0) == []  # 1 line: nothing to cross-validate
    with pytest.raises(ValueError, match="folds"):
        selfval.cv_splits(centre, 1, 0)


def test_validation_error_is_unbiased_for_the_held_out_error_energy():
    """E[error] over the noise = ||M_V F S (x_true - x)||^2 exactly (the noise energy is subtracted)."""
    torch.manual_seed(0)
    C, H, W = 4, 32, 40
    maps = _normalised(_maps(C, H, W))
    x_true = torch.from_numpy(phantom(H, W, 1))
    x = x_true * 0.9 + 0.05 * torch.from_numpy(phantom(H, W, 2))  # some reconstruction
    mask = make_sampler("random", 3.0, 0.1).sample((H, W), 1)
    split = selfval.split_mask(mask, 0.2, 0)[0]
    v = split.val_mask.reshape(1, W)
    truth = float(((fft2c(maps * (x_true - x)) * v).abs() ** 2).sum())
    sigma = 0.05
    clean = fft2c(maps * x_true) * mask
    draws = []
    for _ in range(400):
        n = sigma * torch.complex(torch.randn(C, H, W), torch.randn(C, H, W)) / math.sqrt(2)
        draws.append(float(selfval.validation_error(clean + n * mask, maps, split, x, sigma)["error"]))
    draws = np.array(draws)
    z = (draws.mean() - truth) / (draws.std(ddof=1) / math.sqrt(len(draws)))
    assert abs(z) < 4, (draws.mean(), truth)
    raw = np.mean([float(selfval.validation_error(clean, maps, split, x, 0.0)["error"])])
    assert raw == pytest.approx(truth, rel=1e-4)
    # without the noise term the estimate is biased by the noise energy (the test can fail)
    assert draws.mean() + split.n_val * C * H * sigma ** 2 > truth + 4 * draws.std() / math.sqrt(len(draws))


def test_estimate_of_the_whole_image_error_when_error_depends_on_radius_only():
    """Coil k-space error energy that is constant within each stratum's band of radius: the stratified
    estimate of the error energy outside the mask is exact (x = 0, so the error is the data itself)."""
    C, H, W = 2, 16, 64
    maps = _normalised(_maps(C, H, W))
    mask = make_sampler("random", 4.0, 0.08).sample((H, W), 5)
    split = selfval.split_mask(mask, 0.2, 3)[0]
    r = selfval.radius((1, W)).reshape(-1)
    level = 1.0 + np.searchsorted(split_edges(mask, 0.2), r, side="right")  # (W,) energy per line, by band
    e_k = torch.from_numpy(np.sqrt(level / (C * H))).reshape(1, 1, W).expand(C, H, W).to(torch.complex64)
    est = float(selfval.validation_error(e_k * mask, maps, split, torch.zeros(H, W, dtype=torch.complex64),
                                         0.0)["unmeasured"])
    assert est == pytest.approx(float(level[(mask.reshape(-1) == 0).numpy()].sum()), rel=1e-5)
    # a uniform (unstratified) reading of the same held-out lines is off: the test can fail
    naive = float(level[split.val_index.numpy()].mean()) * split.n_unmeasured
    assert abs(naive - est) > 0.05 * est


def split_edges(mask, fraction):
    """The stratum band edges split_mask uses (test helper, recomputed independently)."""
    cand = torch.nonzero(mask.reshape(-1).bool() & ~selfval.calibration_region(mask).reshape(-1)).reshape(-1).numpy()
    r = selfval.radius(tuple(mask.shape[-2:])).reshape(-1)
    cand = cand[np.argsort(r[cand], kind="stable")]
    strata = np.array_split(cand, max(2, int(round(fraction * len(cand)))))
    return np.array([(r[a[-1]] + r[b[0]]) / 2 for a, b in zip(strata[:-1], strata[1:])])


def test_posterior_predicted_error_matches_a_calibrated_gaussian_posterior():
    """Truth and K samples i.i.d. from one Gaussian: E[held-out error of the K-mean] = s_V^2 (1 + 1/K)."""
    torch.manual_seed(1)
    C, H, W, K = 2, 16, 32, 4
    maps = _normalised(_maps(C, H, W))
    mask = make_sampler("random", 3.0, 0.1).sample((H, W), 2)
    split = selfval.split_mask(mask, 0.2, 0)[0]
    mean = torch.from_numpy(phantom(H, W, 3))
    cov_sqrt = torch.linspace(0.02, 0.2, W)  # a smooth, non-white posterior spread
    draw = lambda *s: mean + cov_sqrt * torch.complex(torch.randn(*s, H, W), torch.randn(*s, H, W))  # noqa: E731
    obs, pred = [], []
    for _ in range(300):
        truth, samples = draw(), draw(K)
        y = fft2c(maps * truth) * mask
        obs.append(float(selfval.validation_error(y, maps, split, samples.mean(0), 0.0)["error"]))
        pred.append(selfval.posterior_predicted(samples, maps, split))
    ratio = np.mean(obs) / np.mean(pred)
    assert 0.85 < ratio < 1.15, ratio
    assert math.isnan(selfval.posterior_predicted(draw(1), maps, split))


def test_expected_energy_is_unbiased_for_any_reconstruction_under_a_calibrated_posterior():
    """Truth and K samples i.i.d. from one Gaussian, x a fixed image off the posterior mean: the mean of
    expected_energy(x) over draws equals the mean of ||F S (x - truth)||^2 per k-space line; with x None it is the
    spread (the posterior mean's expected error). A wrong factor on the spread (1 + 1/K instead of 1 - 1/K) or a
    missing one fails the first check."""
    torch.manual_seed(3)
    C, H, W, K = 2, 16, 32, 3
    maps = _normalised(_maps(C, H, W))
    mean = torch.from_numpy(phantom(H, W, 3))
    cov_sqrt = torch.linspace(0.05, 0.3, W)
    draw = lambda *s: mean + cov_sqrt * torch.complex(torch.randn(*s, H, W), torch.randn(*s, H, W))  # noqa: E731
    x = mean + 0.1 * torch.from_numpy(phantom(H, W, 5)).roll(3, -1)
    shape = (1, 1, W)
    obs, exp = torch.zeros(W, dtype=torch.float64), torch.zeros(W, dtype=torch.float64)
    n = 400
    for _ in range(n):
        truth, samples = draw(), draw(K)
        obs += (fft2c(maps * (x - truth)).abs() ** 2).sum((0, 1)).double() / n
        exp += selfval.expected_energy(x, samples, maps, shape) / n
    assert float(exp.sum() / obs.sum()) == pytest.approx(1.0, abs=0.04)
    assert float(((exp - obs) / obs).abs().max()) < 0.2
    samples = draw(K)
    assert torch.equal(selfval.expected_energy(None, samples, maps, shape), selfval.spread_energy(samples, maps, shape))
    assert bool(torch.isnan(selfval.expected_energy(x, draw(1), maps, shape)).all())


class FakePosterior:
    """A stand-in for DiffusionRecon (``batch`` only): samples = truth + small spread + ``invented`` structure
    where the data cannot see it (its k-space on the lines the given mask leaves out), as a prior that
    hallucinates does."""

    def __init__(self, truth, invented, spread=0.01):
        self.truth, self.invented, self.spread = truth, invented, spread

    @staticmethod
    def denoiser(x, sigma):  # for the OOD score: a prior that shrinks towards 0 (Gaussian, variance 2 x 0.1^2)
        return x * 0.01 / (0.01 + sigma.reshape(-1, 1, 1) ** 2)

    def batch(self, items):
        out = []
        for k, m, s, ctx in items:
            g = torch.Generator().manual_seed(ctx["slice"])
            z = torch.complex(torch.randn(4, *self.truth.shape, generator=g), torch.randn(4, *self.truth.shape, generator=g))
            bias = ifft2c(fft2c(self.invented) * (1 - m[0])) if torch.is_tensor(self.invented) else self.invented
            xs = self.truth + bias + self.spread * z
            mean = xs.mean(0)
            out.append(SliceResult(mean, {"reconstruction_std": torch.sqrt(((xs - mean).abs() ** 2).mean(0))},
                                   samples=xs))
        return out


def _slice(seed=0, C=4, H=48, W=64, sigma=0.002):
    torch.manual_seed(seed)
    maps = _normalised(_maps(C, H, W))
    truth = torch.from_numpy(phantom(H, W, seed))
    mask = make_sampler("random", 4.0, 0.08).sample((H, W), seed)
    n = sigma * torch.complex(torch.randn(C, H, W), torch.randn(C, H, W)) / math.sqrt(2)
    k = (fft2c(maps * truth) + n) * mask
    return truth, (k, mask, maps, {"file": "f", "slice": seed, "noise_std": sigma})


def test_guard_keeps_a_good_posterior_and_flags_invented_structure():
    truth, item = _slice(C=8)
    opts = GuardOptions(l1_iters=30, sense_iters=30)
    good = GuardedRecon(FakePosterior(truth, 0.0), opts)
    res = good(*item)
    assert res.info["alpha"] > 0.9 and res.info["ood_flag"] is False
    err = lambda x: float(((x.abs() - truth.abs()) ** 2).mean())  # noqa: E731
    assert err(res.image) < 1.5 * err(res.extra["reconstruction_diffusion"])
    # invented structure: a confident posterior with a blob that is not in the data
    H, W = truth.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    blob = 2.0 * (((yy - 0.1) / 0.25) ** 2 + ((xx - 0.1) / 0.15) ** 2 < 1).to(torch.complex64)
    bad = GuardedRecon(FakePosterior(truth, blob), opts)
    res = bad(*item)
    assert res.info["choice"] != "diffusion" and res.info["ood_flag"] is True and res.info["alpha"] < 0.5
    assert res.info["ood_db"] > 0 and res.info["calibration_ratio"] > 4
    err_out = (res.image.abs() - truth.abs()).abs()
    err_diff = (res.extra["reconstruction_diffusion"] - truth.abs()).abs()
    assert err_out.pow(2).mean() < err_diff.pow(2).mean()
    # the written std now covers the invented blob: most of its error lies within 2 std, unlike the raw std
    inside = (res.extra["reconstruction_diffusion"] - truth.abs()).abs() > 0.1  # where the prior invented
    raw = res.extra["reconstruction_diffusion_std"]
    assert (err_diff[inside] <= 2 * raw[inside]).float().mean() < 0.2
    assert (err_diff[inside] <= 2 * res.extra["reconstruction_std"][inside]).float().mean() > 0.8
    json.dumps(res.info)  # JSON-able for the output attrs


def test_guard_estimate_of_a_blank_slice_is_finite():
    """A slice of noise only (a blank slice at the end of a volume): every held-out error is within its noise, some
    below 0 once the noise is subtracted; each estimate rests on the floor (finite PSNR), not on a perfect image."""
    truth, (k, mask, maps, ctx) = _slice(sigma=0.01)
    blank = torch.zeros_like(truth)
    g = torch.Generator().manual_seed(4)
    noise = 0.01 * torch.complex(torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g)) / math.sqrt(2)
    res = GuardedRecon(FakePosterior(blank, 0.0, spread=1e-3), GuardOptions(l1_iters=20, sense_iters=20))(
        noise * mask, mask, maps, ctx)
    held = res.info["held_out_error"]
    assert min(held.values()) < 0  # the case the floor is for (this draw)
    assert all(math.isfinite(v) for v in res.info["est_psnr"].values()), res.info["est_psnr"]


def test_guard_with_more_folds_than_the_mask_allows_uses_the_folds_it_can():
    """A sparse mask cannot give every one of many folds a position per stratum: the guard holds out what it can
    (selfval.split_mask caps the folds) and still decides, instead of running unguarded."""
    truth, item = _slice()
    res = GuardedRecon(FakePosterior(truth, 0.0), GuardOptions(l1_iters=10, sense_iters=10, folds=50))(*item)
    assert 1 < res.info["folds"] < 50 and "no held-out" not in res.info["reason"]
    assert "ood_db" in res.info and math.isfinite(res.info["est_psnr"]["diffusion"])
    # the per-line record: one entry per held-out line of every fold, summing to the recorded totals
    lines = res.info["held_out_lines"]
    assert len(lines["radius"]) == res.info["held_out_positions"] and min(lines["radius"]) > 0
    for c, held in res.info["held_out_error"].items():
        if c == "blend":
            continue
        assert len(lines["error"][c]) == len(lines["radius"])
        assert sum(lines["error"][c]) == pytest.approx(held, rel=1e-9)
        assert sum(lines["expected"][c]) == pytest.approx(res.info["expected_held_out"][c], rel=1e-9)


def test_guard_without_held_out_lines_is_unguarded_and_says_so():
    truth, (k, mask, maps, ctx) = _slice()
    centre = torch.zeros_like(mask)
    centre[..., 28:36] = 1
    res = GuardedRecon(FakePosterior(truth, 0.0))(k * centre, centre, maps, ctx)
    assert res.info["choice"] == "diffusion" and res.info["ood_flag"] is None and "no held-out" in res.info["reason"]


def test_guard_options_are_checked():
    with pytest.raises(ValueError, match="fraction"):
        GuardOptions(fraction=0.7)
    with pytest.raises(ValueError, match="L1"):
        GuardOptions(l1_grid=())


def test_ratio_estimate_is_exact_when_errors_follow_the_posterior_spread():
    """Held-out errors proportional to the spread (c = 2.5): the ratio estimate returns c x the spread outside
    the mask; an unusable spread gives NaN (the guard then falls back to the stratified estimate)."""
    spread_held, spread_out = 3.0, 40.0
    assert selfval.ratio_estimate(2.5 * spread_held, spread_held, spread_out) == pytest.approx(2.5 * spread_out)
    assert math.isnan(selfval.ratio_estimate(1.0, 0.0, spread_out))
    assert math.isnan(selfval.ratio_estimate(1.0, math.nan, spread_out))
    # a held-out error below the floor (its noise standard error) rests on the floor, never on a negative energy
    assert selfval.ratio_estimate(-2.0, spread_held, spread_out, floor=0.6) == pytest.approx(0.2 * spread_out)
    assert selfval.ratio_estimate(2.5 * spread_held, spread_held, spread_out, floor=0.6) == pytest.approx(2.5 * spread_out)


def test_noise_var_is_the_variance_of_the_held_out_error_of_an_exact_reconstruction():
    """x = x_true: the held-out error is pure noise, sum of n |n_i|^2 - sigma^2 with |n_i|^2 exponential (mean and
    sd sigma^2), so its variance is n sigma^4 (``noise_var``), the floor of ``ratio_estimate``."""
    torch.manual_seed(1)
    C, H, W = 4, 16, 32
    maps = _normalised(_maps(C, H, W))
    x_true = torch.from_numpy(phantom(H, W, 1))
    mask = make_sampler("random", 3.0, 0.1).sample((H, W), 2)
    split = selfval.split_mask(mask, 0.2, 0)[0]
    sigma = 0.3
    clean = fft2c(maps * x_true) * mask
    draws, var = [], None
    for _ in range(600):
        n = sigma * torch.complex(torch.randn(C, H, W), torch.randn(C, H, W)) / math.sqrt(2)
        v = selfval.validation_error(clean + n * mask, maps, split, x_true, sigma)
        draws.append(float(v["error"]))
        var = v["noise_var"]
    assert var == pytest.approx(split.n_val * C * H * sigma ** 4)
    # the sample variance of 600 near-Gaussian draws is within about 6 % (1 sd) of the truth; a factor 2 fails
    assert np.var(draws, ddof=1) == pytest.approx(var, rel=0.25)


def test_spread_energy_sums_to_the_posterior_spread_in_k_space():
    """Summed over every position, the spread energy is (1 + 1/K) sum_k ||x_k - m||^2 / (K - 1) (orthonormal
    FFT, sum_c |S_c|^2 = 1), for 1-D (lines) and 2-D masks alike."""
    torch.manual_seed(2)
    C, H, W, K = 3, 12, 20, 5
    maps = _normalised(_maps(C, H, W))
    xs = torch.complex(torch.randn(K, H, W), torch.randn(K, H, W))
    want = float(((xs - xs.mean(0)).abs() ** 2).sum()) / (K - 1) * (1 + 1 / K)
    for shape in ((1, 1, W), (1, H, W)):
        e = selfval.spread_energy(xs, maps, shape)
        assert e.shape == (shape[-2] * W,) and float(e.sum()) == pytest.approx(want, rel=1e-4)


def test_guard_choose_mode_picks_one_candidate():
    truth, item = _slice(C=8)
    H, W = truth.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    blob = 2.0 * (((yy - 0.1) / 0.25) ** 2 + ((xx - 0.1) / 0.15) ** 2 < 1).to(torch.complex64)
    res = GuardedRecon(FakePosterior(truth, blob), GuardOptions(l1_iters=30, sense_iters=30, mode="choose"))(*item)
    assert res.info["choice"] in ("sense", "l1-wavelet:0.0003", "l1-wavelet:0.001", "l1-wavelet:0.003")
    assert res.info["alpha"] == 0.0 and res.info["choice"] == res.info["blend_with"]
    with pytest.raises(ValueError, match="mode"):
        GuardOptions(mode="mix")


def test_blend_weight_is_the_noise_free_least_squares_mix():
    """Residuals r = e + n with the same noise n: alpha equals the minimiser of ||alpha e_a + (1-alpha) e_b||^2
    for every noise draw (the noise cancels in r_a - r_b), clipped to [0, 1]."""
    g = torch.Generator().manual_seed(0)
    cn = lambda n: torch.complex(torch.randn(n, generator=g), torch.randn(n, generator=g))  # noqa: E731
    e_a, e_b = cn(500), cn(500)
    d = e_b - e_a
    want = float(torch.real((e_b.conj() * d).sum()) / (d.abs() ** 2).sum())
    assert 0 < want < 1
    for _ in range(3):
        n = 3 * cn(500)
        got = selfval.blend_weight(e_a + n, e_b + n)
        assert abs(got - want) < 0.15  # the cross term <n, d> has zero mean and std ~ ||d|| * 3 / ||d||^2
    assert selfval.blend_weight(torch.zeros(5, dtype=torch.complex64), cn(5)) == 1.0
    assert selfval.blend_weight(cn(5), torch.zeros(5, dtype=torch.complex64)) == 0.0
    same = cn(5)
    assert selfval.blend_weight(same, same.clone()) == 1.0


def _reference(median):
    from recon.ood import OODReference

    return OODReference(median=median, slices=1, sigma=0.05, draws=4, accelerations=[4.0], mask="random", data="d",
                        checkpoint="c", prior_step=1, scores=[median])


def test_guard_flag_from_the_denoiser_score_when_the_prior_has_a_reference():
    from recon.ood import denoiser_change
    from recon.samplers.common import derive_seed

    truth, item = _slice(C=8)
    opts = GuardOptions(l1_iters=30, sense_iters=30, flag_score=2.0)
    post = FakePosterior(truth, 0.0)
    res = GuardedRecon(post, opts)(*item)
    s = res.info["ood_score"]
    sense = __import__("recon.baselines", fromlist=["cg_sense"]).cg_sense(*item[:3], iters=30, lam=1e-2)
    assert s == pytest.approx(float(denoiser_change(post.denoiser, sense[None], [derive_seed("f", 0, "ood")])[0]))
    assert math.isnan(res.info["ood_score_ratio"]) and res.info["ood_flag"] is False  # held-out rule, no reference
    for median, flagged in ((s / 1.9, False), (s / 2.1, True)):
        for what in ("classical", "guard"):
            r = GuardedRecon(post, GuardOptions(l1_iters=30, sense_iters=30, flagged=what), _reference(median))(*item)
            assert r.info["ood_score_ratio"] == pytest.approx(s / median) and r.info["ood_flag"] is flagged
            if flagged and what == "classical":  # the prior is not used: the best classical by cross-validation
                cv = r.info["cv_error"]
                assert sorted(cv) == sorted(c for c in r.info["held_out_error"] if c not in ("diffusion", "blend"))
                assert r.info["choice"] == min(cv, key=cv.get) and r.info["alpha"] == 0
                assert "out of distribution" in r.info["reason"] and "cross-validated" in r.info["reason"]
                # the cross-validated error of one candidate, recomputed from its definition
                c = r.info["choice"]
                k, mask, maps, ctx = item
                want = sum(float(selfval.validation_error(k, maps, sp, GuardedRecon(post, opts)._classical(
                    c, k * sp.recon_mask, sp.recon_mask, maps), ctx["noise_std"])["error"])
                    for sp in selfval.cv_splits(mask, 5, derive_seed("f", 0, "guard-cv", 0)))
                assert cv[c] == pytest.approx(want, rel=1e-6)
                # fallback_folds=0: the guard's own held-out folds decide, as before
                r0 = GuardedRecon(post, GuardOptions(l1_iters=30, sense_iters=30, fallback_folds=0),
                                  _reference(median))(*item)
                held = {c: e for c, e in r0.info["held_out_error"].items() if c not in ("diffusion", "blend")}
                assert r0.info["cv_error"] == {} and r0.info["choice"] == min(held, key=held.get)
            else:  # not flagged, or flagged="guard": the held-out lines decide as without a reference
                assert r.info["choice"] == res.info["choice"] and r.info["alpha"] == res.info["alpha"]
    with pytest.raises(ValueError, match="flagged"):
        GuardOptions(flagged="maybe")
    with pytest.raises(ValueError, match="fallback_folds"):
        GuardOptions(fallback_folds=1)
    # the score needs no held-out lines
    k, mask, maps, ctx = item
    centre = torch.zeros_like(mask)
    centre[..., 28:36] = 1
    r = GuardedRecon(post, opts, _reference(1e-9))(k * centre, centre, maps, ctx)
    assert r.info["choice"] == "diffusion" and r.info["ood_flag"] is True


def test_classical_mix_pairs_the_best_candidate_with_the_other_family():
    """a = the smallest cross-validated error, b = the best of the other family, w = blend_weight of their
    residuals; one family only: a alone."""
    from recon.guard import classical_mix

    g = torch.Generator().manual_seed(1)
    cn = lambda n: torch.complex(torch.randn(n, generator=g), torch.randn(n, generator=g))  # noqa: E731
    res = {"l1-wavelet:0.001": cn(200), "l1-wavelet:0.003": cn(200), "sense": cn(200)}
    err = {"l1-wavelet:0.001": 2.0, "l1-wavelet:0.003": 1.0, "sense": 3.0}
    a, b, w = classical_mix(err, res)
    assert (a, b) == ("l1-wavelet:0.003", "sense")
    assert w == selfval.blend_weight(res[a], res[b]) and 0 < w < 1
    # the mix's held-out residual energy is the least over w in [0, 1] (grid check)
    energy = lambda v: float(((v * res[a] + (1 - v) * res[b]).abs() ** 2).sum())  # noqa: E731
    assert energy(w) <= min(energy(v) for v in np.linspace(0, 1, 101)) + 1e-6
    err["sense"] = 0.5  # now CG-SENSE leads and the best L1 weight is its partner
    assert classical_mix(err, res)[:2] == ("sense", "l1-wavelet:0.003")
    only = {"l1-wavelet:0.001": 1.0, "l1-wavelet:0.003": 2.0}
    assert classical_mix(only, res) == ("l1-wavelet:0.001", "l1-wavelet:0.001", 1.0)


def test_one_se_rule_keeps_cg_sense_unless_l1_wavelet_is_better_by_one_standard_error():
    """one_se_choice: the best L1-wavelet weight only when sum_j d_j < -sqrt(n) sd(d), d_j = e_L1(j) - e_SENSE(j)."""
    from recon.guard import one_se_choice

    sense = torch.tensor([4.0, 3.0, 2.0, 5.0], dtype=torch.float64)
    d = torch.tensor([-1.0, -0.5, 0.5, -1.0], dtype=torch.float64)  # sum -2, consistent over lines
    thresh = -math.sqrt(4) * float(d.std())  # -1.41: sum -2 is below it
    lines = {"sense": sense, "l1-wavelet:0.001": sense + d, "l1-wavelet:0.003": sense + 0.5}
    err = {c: float(v.sum()) for c, v in lines.items()}
    assert float(d.sum()) < thresh and one_se_choice(err, lines) == "l1-wavelet:0.001"
    d2 = torch.tensor([-3.0, 0.5, 0.5, 0.0], dtype=torch.float64)  # smaller in total (-2), but one line carries it
    assert float(d2.sum()) > -math.sqrt(4) * float(d2.std())
    lines2 = {**lines, "l1-wavelet:0.001": sense + d2}
    err2 = {c: float(v.sum()) for c, v in lines2.items()}
    assert min(err2, key=err2.get) == "l1-wavelet:0.001" and one_se_choice(err2, lines2) == "sense"
    # CG-SENSE best outright, or not a candidate: the smallest error
    worse = {c: v if c == "sense" else v + 0.5 for c, v in lines.items()}
    assert one_se_choice({c: float(v.sum()) for c, v in worse.items()}, worse) == "sense"
    only = {"l1-wavelet:0.001": 1.0, "l1-wavelet:0.003": 2.0}
    assert one_se_choice(only, {}) == "l1-wavelet:0.001"
    with pytest.raises(ValueError, match="fallback_rule"):
        GuardOptions(fallback_rule="median")


def test_guard_fallback_rule_1se_on_a_flagged_slice():
    """fallback_rule="1se" on a slice the score flags: the image is one_se_choice of the cross-validated per-line
    errors, refitted on all lines, and the reason names the rule; "min" takes the smallest error."""
    from recon.guard import one_se_choice

    truth, item = _slice(seed=3, C=8, sigma=0.02)  # L1-wavelet smallest, not by one standard error
    k, mask, maps, ctx = item
    g = GuardedRecon(FakePosterior(truth, 0.0), GuardOptions(l1_iters=30, sense_iters=30, fallback_rule="1se"),
                     _reference(1e-9))  # every slice flagged
    r = g(*item)
    err, _, lines = g.classical_cv(item, g.cv_splits(mask, ctx), g.candidates[1:])
    want = one_se_choice(err, lines)
    assert want == "sense" != min(err, key=err.get)
    assert r.info["choice"] == want and r.info["alpha"] == 0.0
    assert torch.allclose(r.image, g._classical(want, k, mask, maps), atol=1e-6)
    assert "one-standard-error" in r.info["reason"]
    r_min = GuardedRecon(FakePosterior(truth, 0.0), GuardOptions(l1_iters=30, sense_iters=30), _reference(1e-9))(*item)
    assert r_min.info["choice"] == min(err, key=err.get) and "one-standard-error" not in r_min.info["reason"]


def test_guard_fallback_mix_on_a_flagged_slice_is_the_cross_validated_mix():
    """fallback_mix=True on a slice the score flags: the image is w x_a + (1 - w) x_b of the classical
    candidates refitted on all lines, with (a, b, w) from classical_mix of the cross-validated residuals."""
    from recon.guard import classical_mix

    truth, item = _slice(C=8, sigma=0.03)  # noisy enough that no candidate alone is best on the held-out lines
    post = FakePosterior(truth, 0.0)
    opts = GuardOptions(l1_iters=30, sense_iters=30, fallback_mix=True)
    g = GuardedRecon(post, opts, _reference(1e-9))  # every slice flagged
    r = g(*item)
    k, mask, maps, ctx = item
    err, resid, _ = g.classical_cv(item, g.cv_splits(mask, ctx), g.candidates[1:])
    assert r.info["cv_error"] == pytest.approx(err)
    a, b, w = classical_mix(err, resid)
    assert r.info["cv_mix"] == {"a": a, "b": b, "weight": w}
    want = w * g._classical(a, k, mask, maps) + (1 - w) * g._classical(b, k, mask, maps)
    assert torch.allclose(r.image, want, atol=1e-6)
    assert 0 < w < 1 and r.info["choice"] == "classical-mix"  # this slice mixes (L1-wavelet and CG-SENSE differ)
    assert f"{w:.2f} x {a}" in r.info["reason"] and "cross-validated" in r.info["reason"]
    # the mix's error is at most the worse of its two parts (convexity)
    e = lambda x: float(((x - truth).abs() ** 2).sum())  # noqa: E731
    assert e(r.image) <= max(e(g._classical(a, k, mask, maps)), e(g._classical(b, k, mask, maps))) + 1e-9


def test_guard_partner_cv_blends_with_the_cross_validated_classical_choice():
    """partner_cv=True on a slice that is not flagged (no OOD reference, blend mode): the blend's classical partner
    is the candidate with the smallest K-fold cross-validated error (``classical_cv``), refitted on all lines, and
    the image is alpha x posterior mean + (1 - alpha) x that partner."""
    truth, item = _slice(C=8, sigma=0.03)
    H, W = truth.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    blob = 0.5 * (((yy - 0.1) / 0.25) ** 2 + ((xx - 0.1) / 0.15) ** 2 < 1).to(torch.complex64)
    g = GuardedRecon(FakePosterior(truth, blob), GuardOptions(l1_iters=30, sense_iters=30))  # partner_cv: default
    r = g(*item)
    k, mask, maps, ctx = item
    err, _, _ = g.classical_cv(item, g.cv_splits(mask, ctx), g.candidates[1:])
    partner = min(err, key=err.get)
    assert r.info["cv_error"] == pytest.approx(err) and r.info["blend_with"] == partner
    a = r.info["alpha"]
    assert 0 < a < 1 and r.info["choice"] == "blend" and "cross-validation" in r.info["reason"]
    post = FakePosterior(truth, blob).batch([item])[0].image
    want = a * post + (1 - a) * g._classical(partner, k, mask, maps)
    assert torch.allclose(r.image, want, atol=1e-6)
    # off, or no cross-validation folds: the held-out lines pick the partner and nothing else is rerun
    held = lambda i: min((c for c in i["held_out_error"] if c not in ("diffusion", "blend")),  # noqa: E731
                         key=i["held_out_error"].get)
    for o in (GuardOptions(l1_iters=30, sense_iters=30, partner_cv=False),
              GuardOptions(l1_iters=30, sense_iters=30, fallback_folds=0)):
        r0 = GuardedRecon(FakePosterior(truth, blob), o)(*item)
        assert r0.info["cv_error"] == {} and r0.info["blend_with"] == held(r0.info)
        assert "cross-validation" not in r0.info["reason"]


def test_benchmark_spearman_ci_resamples_slices_and_pools_accelerations():
    """benchmarks/guard.py: Spearman of a monotone estimate is 1 with a degenerate interval; a slice's points move
    together in the bootstrap; pooling joins each dataset x prior's accelerations."""
    import importlib
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    g = importlib.import_module("guard")
    pts = [["f", i, m, 4.0, 20 + i + j, 25 + i + j] for i in range(6) for j, m in enumerate(("d", "l1", "s"))]
    assert g.spearman_ci(pts) == pytest.approx((1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    noisy = [[*p[:4], p[4] + rng.normal(0, 2), p[5]] for p in pts]
    rho, lo, hi = g.spearman_ci(noisy)
    assert lo < rho < hi and lo < 0.999  # the interval is not degenerate once the estimate is noisy
    rows = [{"data": "a", "prior": "p", "R": R, "est_points": [[*p[:3], R, *p[4:]] for p in pts],
             "spearman_ci": (1.0, 1.0, 1.0)} for R in (4.0, 8.0)]
    pooled = g.pooled_spearman(rows)
    assert len(pooled) == 1 and pooled[0]["points"] == 36 and pooled[0]["slices"] == 6
    assert math.isnan(g.spearman_ci(pts[:2])[0])


def test_magnitude_fraction_in_closed_form_cases():
    """A large real positive image and small errors: errors in phase with it survive the magnitude whole (1),
    circular complex errors half (their in-phase part), pure phase rotations not at all (0)."""
    g = torch.Generator().manual_seed(0)
    K, H, W = 8, 32, 32
    x = torch.full((H, W), 10.0, dtype=torch.complex64)
    real = torch.randn(K, H, W, generator=g) * 0.01
    circ = torch.complex(torch.randn(K, H, W, generator=g), torch.randn(K, H, W, generator=g)) * 0.01
    theta = torch.randn(K, 1, 1, generator=g) * 0.1
    assert selfval.magnitude_fraction(x, x + real) == pytest.approx(1.0, abs=1e-3)
    assert selfval.magnitude_fraction(x, x + circ) == pytest.approx(0.5, abs=0.03)
    assert selfval.magnitude_fraction(x, x * torch.exp(1j * theta)) == pytest.approx(0.0, abs=1e-4)
    assert selfval.magnitude_fraction(None, x + circ) == pytest.approx(0.5, abs=0.03)  # the samples' own mean
    assert math.isnan(selfval.magnitude_fraction(None, (x + circ)[:1]))


def test_estimate_probes_band_weights_and_reference_noise_in_closed_form():
    """benchmarks/estimate_probes.py: every unmeasured line goes to the held-out line nearest in k-space radius
    (weights sum to the unmeasured lines); the RSS reference's noise adds C sigma^2 per pixel where the image is 0
    (RSS(n)^2 = sum_c |n_c|^2) and sigma^2 / 2 where it is large (only the in-phase part survives)."""
    import importlib
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    ep = importlib.import_module("estimate_probes")
    W = 32
    mask = torch.zeros(1, 1, W)
    mask[..., 14:18] = 1  # calibration block
    mask[..., [2, 8, 22, 29]] = 1
    w = ep.band_weights(mask, [8, 22, 29])
    r = np.abs(np.arange(W) - W // 2)
    held = {p: r[p] for p in (8, 22, 29)}
    expect = {p: 0 for p in held}
    for u in np.nonzero(mask.reshape(-1).numpy() == 0)[0]:  # nearest held-out radius (ties: the larger radius)
        best = min(held, key=lambda p: (abs(held[p] - r[u]), -held[p]))
        expect[best] += 1
    assert w == {p: float(v) for p, v in expect.items()}
    assert sum(w.values()) == float((mask == 0).sum())
    C, sigma = 4, 0.1
    zero = torch.zeros(C, 64, 64, dtype=torch.complex64)
    assert ep.noise_term(zero, sigma) == pytest.approx(64 * 64 * C * sigma ** 2, rel=0.02)
    big = torch.zeros(C, 64, 64, dtype=torch.complex64)
    big[0] = 100.0
    assert ep.noise_term(big, sigma) == pytest.approx(64 * 64 * sigma ** 2 / 2, rel=0.03)


def test_benchmark_outer_lines_estimate_leaves_out_each_folds_innermost_line():
    """benchmarks/guard.py outer_lines_mse: with every line's error a fixed multiple of what the posterior
    expected, leaving lines out changes nothing; when each fold's first (innermost) line is 10x off, the outer
    lines' ratio (1x) replaces the pooled one; runs without the per-line record give NaN."""
    import importlib
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    g = importlib.import_module("guard")
    exp = [4.0, 1.0, 0.5, 3.0, 1.0, 0.5]  # 2 folds x 3 lines, nearest the centre first

    def info(err):
        return {"folds": 2, "held_out_lines": {"radius": [0.1, 0.2, 0.3] * 2, "error": {"d": err},
                                               "expected": {"d": exp}},
                "held_out_noise_var": 1e-12, "held_out_error": {"d": sum(err)}, "expected_held_out": {"d": sum(exp)},
                "expected_unmeasured": {"d": 100.0}, "est_mse": {"d": sum(err) / sum(exp) * 100.0 / 64}}

    same = info([2 * e for e in exp])
    assert g.outer_lines_mse(same, "d") == pytest.approx(same["est_mse"]["d"])
    off = info([10 * e if i % 3 == 0 else e for i, e in enumerate(exp)])
    assert g.outer_lines_mse(off, "d") == pytest.approx(1.0 * 100.0 / 64)
    assert off["est_mse"]["d"] > 5 * g.outer_lines_mse(off, "d")
    assert math.isnan(g.outer_lines_mse({"folds": 2}, "d"))
