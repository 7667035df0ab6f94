"""Posterior samplers (dds, dps, pc, langevin) against an exact Gaussian posterior, plus plumbing tests.

Prior: x0 = mu + g * eps (eps with N(0, 1) real and imaginary parts, g per pixel), whose MMSE denoiser is
D(x, sigma) = mu + g^2 / (g^2 + sigma^2) (x - mu). With y = A x0 + n, n ~ CN(0, sigma_y^2) on the mask, the
posterior is Gaussian; its mean and covariance are computed densely in the 2N-dim real representation.
"""

from __future__ import annotations

import math

import pytest
import torch

from mri_diffusion.physics.fft import fft2c
from mri_diffusion.physics.sense import Sense
from recon.samplers import (SAMPLER_NAMES, CountingDenoiser, NoiseSource, default_sigmas, derive_seed,
                            geometric_sigmas, get_sampler, karras_sigmas, network_calls)
from recon.samplers.common import residual_norm

NMC = 2000  # Monte-Carlo batch (seeds 0..1999)


pytestmark = pytest.mark.usefixtures("one_thread")


class GaussDenoiser:
    """Exact E[x0 | x0 + sigma eps = x] for x0 = mu + g eps0 (per real channel std g, per pixel)."""

    def __init__(self, mu: torch.Tensor, g: torch.Tensor):
        self.mu, self.g = mu, g
        self.sigma_data = g

    def __call__(self, x, sigma):
        s2 = sigma.to(torch.float32).reshape(-1, 1, 1) ** 2
        g2 = self.g ** 2
        return self.mu + g2 / (g2 + s2) * (x - self.mu)


def _crandn(shape, gen):
    return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


class Problem:
    """6x5 image, 2 coils with random normalised maps, columns {0, 2, 3} sampled, noisy y."""

    def __init__(self, sigma_y: float = 0.3, H: int = 6, W: int = 5, C: int = 2, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.H, self.W, self.sigma_y = H, W, sigma_y
        self.mu = 0.5 * _crandn((H, W), gen)
        self.g = 0.5 + torch.rand(H, W, generator=gen)
        maps = _crandn((1, C, H, W), gen)
        self.maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
        self.mask = torch.zeros(1, 1, 1, W)
        self.mask[..., [0, 2, 3]] = 1
        A1 = Sense(self.maps, self.mask)
        x0 = self.mu + self.g * _crandn((H, W), gen)
        y = A1(x0[None])
        self.y = (y + sigma_y / math.sqrt(2) * _crandn(tuple(y.shape), gen)) * self.mask
        self.den = GaussDenoiser(self.mu, self.g)
        # dense exact posterior in the real representation [Re x; Im x]
        N = H * W
        E = torch.eye(N, dtype=torch.complex64).reshape(N, H, W)
        Ac = torch.stack([A1(E[j:j + 1])[0].reshape(-1) for j in range(N)], 1).to(torch.complex128)
        Ar = torch.cat([torch.cat([Ac.real, -Ac.imag], 1), torch.cat([Ac.imag, Ac.real], 1)], 0)
        yr = torch.cat([self.y.reshape(-1).real, self.y.reshape(-1).imag]).double()
        sy2 = sigma_y ** 2 / 2  # per real channel
        g2 = (self.g.reshape(-1).double() ** 2).repeat(2)
        mur = torch.cat([self.mu.reshape(-1).real, self.mu.reshape(-1).imag]).double()
        self.cov = torch.linalg.inv(torch.diag(1 / g2) + Ar.T @ Ar / sy2)
        self.chol = torch.linalg.cholesky(self.cov) if sigma_y > 0 else None  # sigma_y = 0: no density
        self.mean = self.cov @ (mur / g2 + Ar.T @ yr / sy2)
        self.prior_mean = mur
        self.noise_norm = math.sqrt(int(self.mask.sum()) * H * C) * sigma_y  # E||n|| ~ sqrt(M) sigma_y

    def batch(self, B, noise_std=None):
        A = Sense(self.maps.expand(B, -1, -1, -1), self.mask.expand(B, -1, -1, -1))
        return A, self.y.expand(B, -1, -1, -1), torch.full((B,), self.sigma_y if noise_std is None else noise_std)

    def run(self, name, sigmas, B=NMC, denoiser=None, noise_std=None, **opt):
        """``noise_std``: the level the sampler is told (default: the true sigma_y)."""
        A, y, nstd = self.batch(B, noise_std)
        x = get_sampler(name)(denoiser or self.den, y, A, sigmas, noise=NoiseSource(range(B)), noise_std=nstd,
                              **opt)
        assert x.shape == (B, self.H, self.W) and x.dtype == torch.complex64
        xr = torch.cat([x.reshape(B, -1).real, x.reshape(B, -1).imag], 1).double()
        m, v, pv = xr.mean(0), xr.var(0), self.cov.diag()
        d = xr.shape[1]
        # whitened by the exact posterior: w ~ N(0, I) for an exact sampler
        w = torch.linalg.solve_triangular(self.chol, (xr - self.mean).T, upper=False).T
        Sw = torch.cov(w.T)
        eye = torch.eye(d, dtype=Sw.dtype)
        Sx = torch.cov(xr.T)
        g2 = (self.g.reshape(-1).double() ** 2).repeat(2)
        ev_sx = torch.linalg.eigvalsh(Sx)
        return dict(
            z=(m - self.mean) / torch.sqrt(pv / B),  # mean error in Monte-Carlo standard errors
            bias=(m - self.mean) / pv.sqrt(),  # mean error in posterior standard deviations
            mean_rel=float(torch.linalg.norm(m - self.mean) / torch.linalg.norm(self.mean)),
            prior_rel=float(torch.linalg.norm(self.prior_mean - self.mean) / torch.linalg.norm(self.mean)),
            var_rel=v / pv - 1,
            cov_fro=float(torch.linalg.norm(Sx - self.cov) / torch.linalg.norm(self.cov)),
            res=float(residual_norm(A, x, y).mean()),
            # B |mean(w)|^2 ~ chi^2_d for an exact sampler
            chi2=float(B * w.mean(0).pow(2).sum()),
            # the same with the sampler's own covariance (Hotelling), for samplers with another covariance
            hotelling=(float(B * (m - self.mean) @ torch.linalg.solve(Sx, m - self.mean))
                       if float(ev_sx[0]) > 1e-6 * float(ev_sx[-1]) else float("inf")),
            # B ||Sw - I||_F^2 / (d (d + 1)): 1 +- 2 / sqrt(d (d + 1)) for an exact sampler (see _cov_tolerance)
            T=float(B * (Sw - eye).pow(2).sum() / (d * (d + 1))),
            eig_post=torch.linalg.eigvalsh(Sw),  # sample covariance in posterior-whitened coordinates
            eig_prior_max=float(torch.linalg.eigvalsh(Sx / torch.sqrt(g2[:, None] * g2[None, :]))[-1]),
            B=B, d=d,
        )


@pytest.fixture(scope="module")
def prob():
    return Problem()


def _report(name, r):
    print(f"\n{name}: mean z rms {float(r['z'].pow(2).mean().sqrt()):.2f} max {float(r['z'].abs().max()):.2f}, "
          f"chi2 {r['chi2']:.1f} (df {r['d']}), Hotelling {r['hotelling']:.1f}, "
          f"max |bias|/std {float(r['bias'].abs().max()):.3f}, mean rel {r['mean_rel']:.4f} "
          f"(prior mean {r['prior_rel']:.3f}), var rel mean {float(r['var_rel'].mean()):+.3f} "
          f"max|.| {float(r['var_rel'].abs().max()):.3f}, cov fro {r['cov_fro']:.3f}, T {r['T']:.3f}, "
          f"whitened cov eig [{float(r['eig_post'][0]):.3f}, {float(r['eig_post'][-1]):.3f}] "
          f"trace/d {float(r['eig_post'].mean()):.3f}, prior-whitened max {r['eig_prior_max']:.3f}, "
          f"||Ax-y|| {r['res']:.3f}")


# Monte-Carlo tolerances, from the number of samples B and the dimension d (60 real coordinates here). The
# samples come from fixed seeds, so the tests are deterministic; these say how far an EXACT sampler's statistics
# can wander, so that a test passes for any correct sampler and fails for a wrong one.
P_FAIL = 1e-4  # false-alarm probability of each mean test


def _chi2_limit(d: int) -> float:
    """Upper 1e-4 quantile of chi^2_d: the largest B |mean error|^2 (whitened) an exact sampler gives."""
    from scipy.stats import chi2

    return float(chi2.isf(P_FAIL, d))


def _cov_tolerance(B: int, d: int, k: float = 4.0) -> float:
    """k standard deviations of T = B ||Sw - I||_F^2 / (d (d + 1)) for an exact sampler.

    Entries of the whitened sample covariance Sw have variance 1 / B (off the diagonal) and 2 / B (on it),
    so B (Sw_jj - 1)^2 and 2 B Sw_jk^2 are each 2 chi^2_1 (mean 2, variance 8): T has mean 1 and standard
    deviation sqrt(8 d (d + 1) / 2) / (d (d + 1)) = 2 / sqrt(d (d + 1)) (0.033 for d = 60; checked on 200 pure
    Gaussian batches: 1.005 +- 0.034). T also has the sample-mean correction, O(1 / B), negligible here.
    """
    return k * 2.0 / math.sqrt(d * (d + 1))


def _mp_edge(B: int, d: int) -> float:
    """Largest eigenvalue of a B-sample covariance of N(0, I_d), Marchenko-Pastur edge (1 + sqrt(d / B))^2
    (1.376 here; 200 Gaussian batches: mean 1.358, max 1.408), plus 0.1 of margin: a sampler whose whitened
    covariance has a larger eigenvalue is over-dispersed in that direction beyond Monte-Carlo error."""
    return (1 + math.sqrt(d / B)) ** 2 + 0.1


def _cov_excess(r) -> float:
    """Relative Frobenius error of the sampler's covariance beyond Monte-Carlo noise, in posterior-whitened
    coordinates: sqrt((||Sw - I||_F^2 - d (d + 1) / B) / d) (0 for an exact sampler; 0.1 = a 10 % error)."""
    d, B = r["d"], r["B"]
    return math.sqrt(max(r["T"] - 1.0, 0.0) * (d + 1) / B)


def _assert_exact(r, k_cov=4.0):
    """Mean and covariance of an exact posterior sampler, within Monte-Carlo error (see the tolerances above)."""
    assert r["chi2"] < _chi2_limit(r["d"]), (r["chi2"], _chi2_limit(r["d"]))
    assert abs(r["T"] - 1.0) < _cov_tolerance(r["B"], r["d"], k_cov), r["T"]


def _assert_not_over_dispersed(r):
    """In no direction is the spread larger than the posterior's (beyond Monte-Carlo error)."""
    assert float(r["eig_post"][-1]) < _mp_edge(r["B"], r["d"]), r["eig_post"][-1]


# --------------------------------------------------------------------------------- exact Gaussian posterior


def test_dds_perturbed_is_exact(prob):
    """Perturb-and-MAP dds with the per-pixel prior std as sigma_data: exact for any eta, 10 network calls.
    Mean (chi^2 of the whitened mean error) and full covariance (T statistic) within Monte-Carlo error."""
    for eta in (0.85, 1.0):
        r = prob.run("dds", karras_sigmas(10), eta=eta, perturb=True, cg_iters=20, sigma_data=prob.g)
        _report(f"dds perturb eta={eta}", r)
        _assert_exact(r)
        assert r["res"] < 1.5 * prob.noise_norm


def test_dds_default(prob):
    """DDS (deterministic DC, ``perturb=False``) is NOT a posterior sampler (dds.py docstring). What it does
    guarantee here: with eta = 1 the mean is the posterior mean (Hotelling test with its own covariance, within
    Monte-Carlo error); eta < 1 biases the mean (bounded); the covariance is never larger than the posterior's in
    any direction, and its total is clearly smaller (the variance DDS loses, measured ~ -60 %)."""
    r1 = prob.run("dds", karras_sigmas(30), eta=1.0, sigma_data=prob.g)
    _report("dds eta=1", r1)
    assert r1["hotelling"] < _chi2_limit(r1["d"]), r1["hotelling"]
    _assert_not_over_dispersed(r1)
    assert float(r1["eig_post"].mean()) < 0.8  # trace ratio, measured 0.40
    r = prob.run("dds", karras_sigmas(30), sigma_data=prob.g)  # default eta = 0.85
    _report("dds eta=0.85", r)
    assert r["mean_rel"] < 0.15 < r["prior_rel"]
    assert float(r["bias"].abs().max()) < 1.0
    _assert_not_over_dispersed(r)
    assert r["res"] < prob.noise_norm  # fits the data at least as well as the truth does


def test_dds_hard_projection_noiseless():
    """sigma_y = 0: lam = 0 and the CG step is the projection onto {A x = y}."""
    p = Problem(sigma_y=0.0)
    A, y, nstd = p.batch(4)
    x = get_sampler("dds")(p.den, y, A, karras_sigmas(5), noise=NoiseSource(range(4)), noise_std=nstd, cg_iters=30)
    assert float(residual_norm(A, x, y).max()) < 1e-4 * float(torch.linalg.vector_norm(y[0]))


def test_langevin_matches_posterior(prob):
    """Annealed Langevin is exact only in the limit (step size -> 0, many steps per level, sigma_L -> 0): with 6
    unadjusted steps per level it lags the annealing (mean off by ~ 2.3 Monte-Carlo standard errors, chi^2 ~ 220
    for 60 degrees of freedom, i.e. a real but small bias) and its last level targets the posterior widened by
    sigma_L = 0.01. Asserted: mean within 0.25 posterior std per coordinate, and the covariance within 10 %
    (relative Frobenius error beyond Monte-Carlo noise, measured ~ 6 %), not over-dispersed in any direction."""
    r = prob.run("langevin", geometric_sigmas(100, 0.01, 5.0), n_steps=6, step_size=0.6)
    _report("langevin", r)
    assert float(r["bias"].abs().max()) < 0.25
    assert float(r["z"].pow(2).mean().sqrt()) < 3.5  # residual annealing lag, measured ~ 2.3
    assert _cov_excess(r) < 0.10, _cov_excess(r)
    assert abs(float(r["eig_post"].mean()) - 1) < 0.1  # total variance, measured +3 %
    _assert_not_over_dispersed(r)


def test_langevin_normalized_is_stable(prob):
    """The CSGM code's normalised likelihood gradient (``normalize=True``) is not a posterior sampler (the
    gradient's size no longer depends on sigma_y): mean off by up to ~ 0.6 posterior std, total variance ~ half.
    Asserted: stable (mean near the data, y fitted) and not over-dispersed in any direction."""
    r = prob.run("langevin", geometric_sigmas(60, 0.01, 5.0), B=500, n_steps=3, normalize=True)
    _report("langevin CSGM-normalised", r)
    assert r["mean_rel"] < 0.2 < r["prior_rel"]
    assert r["res"] < 1.5 * prob.noise_norm
    _assert_not_over_dispersed(r)


def test_dps_mean_and_data_consistency(prob):
    """DPS is an approximation (Chung et al. 2023 replace p(y | x_sigma) by p(y | D(x_sigma))): its mean is not
    the posterior mean and its covariance is not the posterior's (total ~ 60 % of it here). With the noise level
    (discrepancy factor, dps.py) at the default zeta: the mean moves to the data (far closer than the prior's), y
    is fitted to the noise level and no closer (residual = sqrt(M) sigma_y), and the spread is bounded by the
    prior's in every direction (data can only shrink it)."""
    r = prob.run("dps", karras_sigmas(100, 0.004, 10.0))
    _report("dps", r)
    assert r["mean_rel"] < 0.2 and r["mean_rel"] < 0.25 * r["prior_rel"]
    assert 0.95 * prob.noise_norm < r["res"] < 1.05 * prob.noise_norm
    assert r["eig_prior_max"] < _mp_edge(r["B"], r["d"]), r["eig_prior_max"]  # measured 0.90


def test_pc_matches_the_posterior_with_noisy_data(prob):
    """score-MRI PC with the noise level (pc.py): the data-consistency step weighs y against the iterate by their
    noise levels and the corrector targets p_sigma(x | y). Not exact (annealing lag), but close: mean within 0.3
    posterior std per coordinate (measured 0.22), covariance within 25 % (relative Frobenius error beyond Monte-Carlo
    noise, measured ~ 10 %), total variance within 10 % (measured +2.5 %), y fitted about as well as by the truth."""
    r = prob.run("pc", geometric_sigmas(100, 0.002, 20.0))
    _report("pc", r)
    assert float(r["bias"].abs().max()) < 0.3
    assert r["mean_rel"] < 0.1 * r["prior_rel"]
    assert _cov_excess(r) < 0.25, _cov_excess(r)
    assert abs(float(r["eig_post"].mean()) - 1) < 0.1
    assert r["res"] < 1.2 * prob.noise_norm


@pytest.mark.parametrize("name", ["dps", "pc"])
def test_noise_level_matters_for_dps_and_pc(prob, name):
    """Both used to ignore sigma_y (y imposed as if noiseless). Now the same draws with noise_std = 0 and with the
    true level differ: treated as noiseless, PC collapses the spread (total variance ~ 12 % of the posterior's) and
    DPS fits the noise (residual well below sqrt(M) sigma_y); with the true level both spread and fit move to the
    posterior's."""
    from recon.samplers.common import data_weight

    assert data_weight(0.37, torch.zeros(3)) is None  # noiseless data: the full step, the old algorithm exactly
    sig = karras_sigmas(100, 0.004, 10.0) if name == "dps" else geometric_sigmas(100, 0.002, 20.0)
    zero, true = (prob.run(name, sig, B=500, noise_std=n) for n in (0.0, prob.sigma_y))
    _report(f"{name} noise_std=0", zero)
    _report(f"{name} noise_std={prob.sigma_y}", true)
    if name == "pc":
        assert float(zero["eig_post"].mean()) < 0.3 and abs(float(true["eig_post"].mean()) - 1) < 0.15
    else:
        assert zero["res"] < 0.85 * prob.noise_norm < 0.95 * prob.noise_norm < true["res"]
        assert float(true["eig_post"].mean()) > 1.5 * float(zero["eig_post"].mean())


def test_pc_single_coil_hard_projection():
    """Single-coil data consistency in k-space: noiseless y replaces the sampled k-space exactly; noisy y (sigma_y =
    0.1) is weighed against the iterate, so the sampled k-space is no longer y itself but within its noise."""
    gen = torch.Generator().manual_seed(3)
    H, W, B = 8, 6, 3
    mask = torch.zeros(B, 1, 1, W)
    mask[..., [0, 2, 3, 5]] = 1
    A = Sense(None, mask, (H, W))
    y = A(_crandn((B, H, W), gen)) + 0.1 * _crandn((B, 1, H, W), gen) * mask
    den = GaussDenoiser(torch.zeros(H, W, dtype=torch.complex64), torch.ones(H, W))
    for level in (0.0, 0.1):
        x = get_sampler("pc")(den, y, A, geometric_sigmas(5, 0.01, 5.0), noise=NoiseSource([1, 2, 3]),
                              noise_std=torch.full((B,), level))
        k = fft2c(x)
        gap = float(((k - y[:, 0]) * mask).abs().max())
        assert gap < 1e-5 if level == 0 else 1e-3 < gap < 5 * level  # replaced by y / weighed against it
        assert float((k * (1 - mask)).abs().mean()) > 1e-2  # and the rest is not zero-filled


# --------------------------------------------------------------------------------- plumbing


def _small_batch(B, H=6, W=5, C=2, seed=1):
    """B different slices (different maps, masks, y, noise levels)."""
    gen = torch.Generator().manual_seed(seed)
    maps = _crandn((B, C, H, W), gen)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
    mask = (torch.rand(B, 1, 1, W, generator=gen) < 0.6).float()
    mask[..., W // 2] = 1
    A = Sense(maps, mask)
    nstd = 0.05 + 0.2 * torch.rand(B, generator=gen)
    y = (A(_crandn((B, H, W), gen)) + nstd.reshape(-1, 1, 1, 1) / math.sqrt(2) * _crandn((B, C, H, W), gen)) * mask
    return maps, mask, y, nstd


_FEW = {"dds": dict(perturb=True), "dps": dict(stochastic=True), "pc": dict(n_corrector=1),
        "langevin": dict(n_steps=2)}


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_batching_independence(name):
    """A batch of 3 equals each element sampled alone (same seeds), for the Gaussian and a tiny EDM net."""
    from mri_diffusion.nn import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("tiny").eval()
    gauss = GaussDenoiser(0.1 * torch.ones(6, 5, dtype=torch.complex64), torch.full((6, 5), 0.7))
    maps, mask, y, nstd = _small_batch(3)
    seeds = [derive_seed("vol.h5", s, 0) for s in range(3)]
    sig = default_sigmas(name, 4, sigma_max=5.0)
    fn = get_sampler(name)
    for den in (gauss, net):
        xb = fn(den, y, Sense(maps, mask), sig, noise=NoiseSource(seeds), noise_std=nstd, **_FEW[name])
        for b in range(3):
            xs = fn(den, y[b:b + 1], Sense(maps[b:b + 1], mask[b:b + 1]), sig, noise=NoiseSource(seeds[b:b + 1]),
                    noise_std=nstd[b:b + 1], **_FEW[name])
            assert torch.allclose(xb[b:b + 1], xs, atol=1e-5, rtol=1e-5), (name, b, (xb[b:b + 1] - xs).abs().max())


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_edm_tiny_runs_and_counts(name):
    """Every sampler on the tiny EDM net, 16x16 2-coil, 3 levels: finite output and exact call count."""
    from mri_diffusion.nn import build_denoiser

    torch.manual_seed(0)
    net = CountingDenoiser(build_denoiser("tiny").eval())
    maps, mask, y, nstd = _small_batch(2, H=16, W=16, C=2, seed=5)
    seen = []
    x = get_sampler(name)(net, y, Sense(maps, mask), default_sigmas(name, 3), noise=NoiseSource([11, 12]),
                          noise_std=nstd, callback=lambda i, x, x0: seen.append(i))
    assert x.shape == (2, 16, 16) and x.dtype == torch.complex64
    assert bool(torch.isfinite(torch.view_as_real(x)).all())
    assert net.calls == network_calls(name, 3) and seen == [0, 1, 2]


@pytest.mark.parametrize("name,opts", [("dds", {}), ("dps", {}), ("pc", dict(n_corrector=2)), ("pc", {}),
                                       ("langevin", dict(n_steps=2, final_denoise=True)), ("langevin", {})])
def test_network_call_counts(prob, name, opts):
    den = CountingDenoiser(prob.den)
    A, y, nstd = prob.batch(2)
    for steps in (1, 4):
        den.calls = 0
        get_sampler(name)(den, y, A, default_sigmas(name, steps), noise=NoiseSource([0, 1]), noise_std=nstd, **opts)
        assert den.calls == network_calls(name, steps, **opts)
    assert network_calls("dds", 30) == 30 and network_calls("pc", 10) == 20 and network_calls("langevin", 10) == 30


def test_noise_source():
    ns = NoiseSource(list(range(1000)))
    z = ns.randn(0, (8, 8))
    assert z.shape == (1000, 8, 8) and z.dtype == torch.complex64
    r = torch.view_as_real(z)
    assert abs(float(r.mean())) < 0.01 and abs(float(r.var()) - 1) < 0.02
    assert abs(float((r[..., 0] * r[..., 1]).mean())) < 0.01  # real and imaginary parts uncorrelated
    # element b depends only on (seed_b, step, sub)
    assert torch.equal(NoiseSource([5, 7]).randn(3, (4, 4))[1], NoiseSource([7]).randn(3, (4, 4))[0])
    assert torch.equal(ns.randn(0, (8, 8)), z)
    a, b, c = ns.randn(1, (8, 8)), ns.randn(0, (8, 8), sub=1), ns.init((8, 8))
    for other in (a, b, c):
        assert abs(float(torch.corrcoef(torch.stack([r.flatten(), torch.view_as_real(other).flatten()]))[0, 1])) < 0.01
    assert derive_seed("file_a.h5", 3, 0) == derive_seed("file_a.h5", 3, 0) != derive_seed("file_a.h5", 3, 1)


def test_schedule_validation(prob):
    A, y, nstd = prob.batch(1)
    with pytest.raises(ValueError):
        get_sampler("dds")(prob.den, y, A, torch.tensor([1.0, 0.5]), noise=NoiseSource([0]), noise_std=nstd)
    with pytest.raises(ValueError):
        network_calls("nope", 3)
    s = default_sigmas("pc", 7)
    assert s.shape == (8,) and float(s[-1]) == 0 and bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="rho applies to Karras"):
        default_sigmas("pc", 7, rho=3.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        default_sigmas("dds", 5, sigma_min=2.0, sigma_max=1.0)


def test_schedule_overrides():
    """sigma_max / sigma_min / rho reach the Karras schedule: ends at the given levels, and rho = 1 is linear."""
    s = default_sigmas("dds", 5, sigma_min=0.01, sigma_max=2.0, rho=1.0)
    assert s.shape == (6,) and float(s[0]) == 2.0 and float(s[4]) == pytest.approx(0.01) and float(s[5]) == 0
    assert torch.allclose(s[:5], torch.linspace(2.0, 0.01, 5, dtype=torch.float64))
    assert torch.equal(default_sigmas("dds", 10, rho=7.0), default_sigmas("dds", 10))
    from recon.diffusion import DiffusionRecon

    rec = DiffusionRecon(torch.nn.Identity(), "dds", steps=8, sigma_max=1.5, rho=3.0)
    assert torch.equal(rec.sigmas, default_sigmas("dds", 8, sigma_max=1.5, rho=3.0)) and rec.calls_per_sample == 8


def test_cg_is_the_old_name_of_dds():
    from recon.samplers import SAMPLER_ALIASES, canonical_sampler

    assert SAMPLER_ALIASES == {"cg": "dds"} and canonical_sampler("cg") == "dds" and "cg" not in SAMPLER_NAMES
    assert get_sampler("cg") is get_sampler("dds") and torch.equal(default_sigmas("cg"), default_sigmas("dds"))
    with pytest.raises(ValueError, match="unknown sampler 'foo'"):
        get_sampler("foo")
