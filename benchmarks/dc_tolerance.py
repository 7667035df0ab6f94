"""How many CG iterations the ``cg`` sampler's data-consistency (DC) step needs: error vs ``cg_iters``.

At every noise level sigma_i the ``cg`` sampler solves (A^H A + lam_i) x = A^H y + lam_i x0_hat by CG
warm-started at x0_hat = D(x, sigma_i) (``recon/samplers/dds.py``). This script runs the sampler on simulated
slices with the shipped prior and a converged DC solve at every level (``--ref-iters``, tol 1e-6), records
x0_hat and lam_i of every level, and re-solves each level's subproblem with k CG iterations from the same
x0_hat (the iterates of ``physics.cg.conjugate_gradient``; checked against it). Per k it prints, worst over
levels and slices:

* ``DC miss``: ||A x_k - y|| / ||A x* - y|| - 1, how far the data residual of k iterations is above that of
  the converged solve x* (with noisy y and lam > 0 the converged residual is not 0; it sits near the noise
  level), in %; the stated tolerance of the default is DC miss <= 2 % at every level;
* ``||Ax-y||/||y||``: the relative data residual itself (worst level; converged value in the ``ref`` row);
* ``energy err``: ||x_k - x*||_N / ||x0_hat - x*||_N with N = A^H A + lam, the error CG minimises;
* ``dist``: ||x_k - x*|| / ||x0_hat - x*||, the share of the DC correction missed in the Euclidean norm (slow:
  it is dominated by the near-null directions of A^H A, where the converged solve amplifies noise);
* ``normal res``: ||b - N x_k|| / ||b||, what ``cg_tol`` thresholds;
* ``end-to-end``: the whole sampler rerun with that setting (same noise): ||x_out - x_ref|| / ||x_ref|| and
  the PSNR of |x_out| against the fully sampled RSS target (slice max as range), mean over slices;
* ``CG it./slice``: CG iterations summed over the levels (each costs one A^H A on the batch).

Rows ``tol T``: ``cg_tol=T`` with ``cg_iters`` as the cap (iterations per level from the instrumented run).

Cases: 1-D random masks (fastMRI RandomMaskFunc, seeded per file), coil maps by the pipeline's
``estimate_maps`` (ESPIRiT on the ACS): ``--crop 0`` is what ``recon`` uses, ``--crop 0.95`` (sigpy's default)
gives support-limited maps, for which A^H A is singular outside the support.

Usage: python benchmarks/dc_tolerance.py --data /tmp/sim/multicoil_test [--slices 2] [--crop 0 0.95]
       (data: `mridiff simulate --out /tmp/sim`, 8 coils, 128 x 128)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.fastmri_h5 import list_h5, open_volume, read_kspace_slice, read_target  # noqa: E402
from mri_diffusion.physics import Sense  # noqa: E402
from mri_diffusion.physics.calib import estimate_maps  # noqa: E402
from mri_diffusion.physics.cg import _dot  # noqa: E402
from mri_diffusion.measurement import MeasurementModel  # noqa: E402
from mri_diffusion.physics.masks import RandomMask, seed_from  # noqa: E402
from recon.diffusion import load_prior  # noqa: E402
from recon.experiment import machine_line  # noqa: E402
from recon.samplers.common import NoiseSource, default_sigmas, derive_seed, get_sampler, prox_solve  # noqa: E402

ITERS = (1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40)
TOLS = (3e-3, 1e-3, 3e-4)
KMAX = 60  # instrumented iterates per level, and the cap of the tol rows


class Recorder(torch.nn.Module):
    """Passes the prior through and keeps (sigma, x0_hat) of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.sigma_data, self.calls = net, getattr(net, "sigma_data", 0.5), []

    def forward(self, x, sigma):
        out = self.net(x, sigma)
        self.calls.append((float(sigma[0]), out.detach().to(torch.complex64).clone()))
        return out


def cg_iterates(normal, b, x0, kmax):
    """The iterates x_0 .. x_kmax of ``physics.cg.conjugate_gradient`` (same recursion, tol 0), one solve."""
    x, r = x0.clone(), b - normal(x0)
    p, rr = r.clone(), _dot(r, r)
    out = [x]
    for _ in range(kmax):
        Ap = normal(p)
        alpha = (rr / _dot(p, Ap).clamp_min(1e-60)).to(x.real.dtype).reshape(-1, 1, 1)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = _dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-60)).to(x.real.dtype).reshape(-1, 1, 1) * p
        rr = rr_new
        out.append((x, float(rr.sqrt())))
    return out


def norm(t):
    return float(torch.linalg.vector_norm(t))


def condition(path: Path, index: int, R: float, crop: float):
    """One slice as ``recon`` conditions it (mask, ACS scale, ESPIRiT maps, noise level): y, A, noise std, the
    RSS target in the same units, and the file name."""
    vol = open_volume(path, expect="multicoil")
    k = torch.from_numpy(read_kspace_slice(vol, index))
    H, W = k.shape[-2:]
    mask = RandomMask(R).sample((H, W), seed=seed_from(vol.name, 0))
    m = MeasurementModel().condition(k, mask, attrs=vol.attrs, where=f"{path}: slice {index}")
    maps = m.maps if crop == 0 else estimate_maps(m.kspace, m.mask, crop=crop)
    target = read_target(path, "reconstruction_rss")[0][index] / m.scale
    return (m.kspace[None], Sense(maps[None], m.mask[None]), torch.tensor([m.noise_std], dtype=torch.float32), target,
            vol.name)


def psnr(rec, target):
    return 10 * np.log10(target.max() ** 2 / np.mean((rec - target) ** 2))


def measure(denoiser, y, A, nstd, target, seed, ref_iters, sigmas):
    """Per-level arrays (levels, KMAX + 1) of the metrics above, and end-to-end results per setting."""
    fn = get_sampler("dds")
    rec = Recorder(denoiser)
    noise = NoiseSource([seed])
    x_ref = fn(rec, y, A, sigmas, noise=noise, noise_std=nstd, cg_iters=ref_iters, cg_tol=1e-6)
    sd2 = rec.sigma_data ** 2
    sy2 = float(nstd[0]) ** 2 / 2
    L = len(rec.calls)
    m = {key: np.zeros((L, KMAX + 1)) for key in ("miss", "res", "energy", "dist", "normal")}
    for i, (s, x0_hat) in enumerate(rec.calls):
        lam = sy2 / (s * s * sd2 / (s * s + sd2))  # dc_weight 1, as in the sampler

        def normal(u):
            return A.normal(u) + lam * u

        def energy(e):
            return float(_dot(e, normal(e))) ** 0.5

        b = A.adjoint(y) + lam * x0_hat
        xs = prox_solve(A, y, x0_hat, torch.tensor([lam]), ref_iters, 1e-6)
        its = [(x0_hat, norm(b - normal(x0_hat)))] + cg_iterates(normal, b, x0_hat, KMAX)[1:]
        rs, ys, e0, d0 = norm(A(xs) - y), norm(y), max(energy(x0_hat - xs), 1e-30), max(norm(x0_hat - xs), 1e-30)
        for k, (x, rk) in enumerate(its):
            r = norm(A(x) - y)
            m["miss"][i, k], m["res"][i, k] = r / rs - 1, r / ys
            m["energy"][i, k], m["dist"][i, k] = energy(x - xs) / e0, norm(x - xs) / d0
            m["normal"][i, k] = rk / norm(b)
        x5 = prox_solve(A, y, x0_hat, torch.tensor([lam]), 5)
        assert norm(its[5][0] - x5) <= 1e-4 * norm(x5), "cg_iterates drifted from physics.cg"
    m["ref_res"] = max(norm(A(prox_solve(A, y, x0, torch.tensor([sy2 / (s * s * sd2 / (s * s + sd2))]), ref_iters,
                                          1e-6)) - y) / norm(y) for s, x0 in rec.calls)
    e2e = {}
    settings = [(k, 0.0) for k in ITERS] + [(KMAX, t) for t in TOLS]
    for k, t in settings:
        x = fn(denoiser, y, A, sigmas, noise=noise, noise_std=nstd, cg_iters=k, cg_tol=t)
        e2e[(k, t)] = (norm(x - x_ref) / norm(x_ref), psnr(x[0].abs().numpy(), target))
    e2e["ref"] = (0.0, psnr(x_ref[0].abs().numpy(), target))
    return m, e2e


def row(label, ms, e2es, key, pick):
    """One table row; ``pick(m)`` -> per-level iteration index (levels,)."""
    idx = [pick(m) for m in ms]
    worst = {q: max(float(m[q][np.arange(len(j)), j].max()) for m, j in zip(ms, idx))
             for q in ("miss", "res", "energy", "dist", "normal")}
    its = np.mean([int(j.sum()) for j in idx])
    ed = max(e[key][0] for e in e2es)
    ep = np.mean([e[key][1] for e in e2es])
    return (f"| {label} | {100 * worst['miss']:.1f} % | {worst['res']:.4f} | {100 * worst['energy']:.1f} % | "
            f"{100 * worst['dist']:.0f} % | {worst['normal']:.1e} | {100 * ed:.2f} % | {ep:.2f} | {its:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder or file(s) of fastMRI multi-coil h5 with targets")
    ap.add_argument("--checkpoint", default="builtin")
    ap.add_argument("--slices", type=int, default=2, help="slices per file (the middle ones)")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--accelerations", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--crop", type=float, nargs="+", default=[0.0, 0.95])
    ap.add_argument("--ref-iters", type=int, default=300)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    dev = torch.device("cpu")
    print(f"Machine: {machine_line(dev)}; prior {a.checkpoint}; sampler dds, its default 30-level schedule, "
          f"1 sample per slice; worst over levels and slices unless said")
    net, _, _ = load_prior(a.checkpoint, dev)
    sigmas = default_sigmas("dds")
    files = list_h5([a.data])[: a.files]
    for crop in a.crop:
        for R in a.accelerations:
            ms, e2es = [], []
            for path in files:
                n = open_volume(path, expect="multicoil").num_slices
                first = max(0, n // 2 - a.slices // 2)
                for index in range(first, min(n, first + a.slices)):
                    y, A, nstd, target, name = condition(path, index, R, crop)
                    m, e2e = measure(net, y, A, nstd, target, derive_seed(name, index, 0), a.ref_iters, sigmas)
                    ms.append(m), e2es.append(e2e)
            C, H, W = y.shape[1:]
            print(f"\n{C} coils x {H} x {W}, R={R:g}, ESPIRiT crop {crop:g}, {len(ms)} slices of {len(files)} file(s)")
            print("| cg_iters | DC miss | ||Ax-y||/||y|| | energy err | dist | normal res | end-to-end rel. diff "
                  "| end-to-end PSNR (dB) | CG it./slice |")
            print("|---|---|---|---|---|---|---|---|---|")
            for k in ITERS:
                print(row(str(k), ms, e2es, (k, 0.0), lambda m, k=k: np.full(m["miss"].shape[0], k)))
            for t in TOLS:
                def first_below(m, t=t):
                    ok = m["normal"] <= t
                    return np.where(ok.any(1), ok.argmax(1), KMAX)
                print(row(f"tol {t:g} (cap {KMAX})", ms, e2es, (KMAX, t), first_below))
            ref_res = max(m["ref_res"] for m in ms)
            print(f"| converged ({a.ref_iters}, tol 1e-6) | 0 | {ref_res:.4f} | 0 | 0 | <= 1e-6 | 0 | "
                  f"{np.mean([e['ref'][1] for e in e2es]):.2f} | |")


if __name__ == "__main__":
    main()
