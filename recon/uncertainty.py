"""Does the posterior standard deviation mean something? Calibration against the true error.

Per pixel (inside the fastMRI crop): e = |reconstruction - target| and s = posterior std. Reported:
- corr: Pearson correlation between s and e over all pixels (higher: the std points at the errors);
- within_2std: fraction of pixels with e <= 2 s (a calibrated Gaussian posterior gives ~0.95 for the
  complex error; against the noisy RSS reference it is a lower bound);
- ratio: mean e / mean s.

The right values of the last two depend on the number K of posterior samples: the std is estimated from K
draws (``sqrt(mean_j |x_j - mean|^2)``, complex) and the error is that of the K-sample mean's magnitude.
``ideal(K)`` gives them for a perfectly calibrated posterior (truth and samples i.i.d. from the same complex
Gaussian, high SNR), by Monte Carlo: K = 4 gives 92.9 % within 2 std and ratio 0.76 (K -> inf: 99.6 %, 0.56,
since the magnitude error sees one of the std's two real channels). A method below ``ideal(K)``'s fraction
and above its ratio under-estimates its uncertainty.
"""

from __future__ import annotations

import functools

import numpy as np


def calibration(target: np.ndarray, recon: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """target, recon, std: same shape (slices, H, W). Pools all pixels."""
    if not (target.shape == recon.shape == std.shape):
        raise ValueError(f"shapes differ: target {target.shape}, recon {recon.shape}, std {std.shape}")
    e = np.abs(recon.astype(np.float64) - target).ravel()
    s = std.astype(np.float64).ravel()
    corr = float(np.corrcoef(e, s)[0, 1]) if s.std() > 0 and e.std() > 0 else float("nan")
    return {"corr": corr, "within_2std": float(np.mean(e <= 2 * s)), "ratio": float(e.mean() / max(s.mean(), 1e-30)),
            "pixels": int(e.size)}


@functools.lru_cache(maxsize=None)
def ideal(k: int, n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """within_2std and ratio of a perfectly calibrated posterior sampled K times (see module doc)."""
    if k < 2:
        raise ValueError(f"calibration needs at least 2 posterior samples, got {k}")
    rng = np.random.default_rng(seed)
    cn = lambda *shape: (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)  # noqa: E731
    x = 100.0 + cn(n, k)
    truth = 100.0 + cn(n)
    m = x.mean(1)
    s = np.sqrt((np.abs(x - m[:, None]) ** 2).mean(1))
    e = np.abs(np.abs(m) - np.abs(truth))
    return {"within_2std": float(np.mean(e <= 2 * s)), "ratio": float(e.mean() / s.mean())}


def pooled(stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Calibration over several volumes (their pixels pooled)."""
    t = np.concatenate([a.ravel() for a, _, _ in stats])
    r = np.concatenate([b.ravel() for _, b, _ in stats])
    s = np.concatenate([c.ravel() for _, _, c in stats])
    return calibration(t[None], r[None], s[None])


def html_table(rows: list[dict]) -> str:
    head = "<tr><th>method</th><th>R</th><th>corr(std, |error|)</th><th>|error| &le; 2 std</th>" \
           "<th>mean |error| / mean std</th><th>samples K</th><th>calibrated, K samples: &le; 2 std / ratio</th>" \
           "<th>pixels</th></tr>"

    def ref(r):
        k = r.get("samples")
        if not k or k < 2:
            return "n/a"
        i = ideal(int(k))
        return f"{100 * i['within_2std']:.1f} % / {i['ratio']:.2f}"

    body = "".join(f"<tr><td>{r['method']}</td><td>{r['acceleration']}</td><td>{r['corr'] or float('nan'):.3f}</td>"
                   f"<td>{100 * r['within_2std']:.1f} %</td><td>{r['ratio']:.2f}</td><td>{r.get('samples') or ''}</td>"
                   f"<td>{ref(r)}</td><td>{r['pixels']}</td></tr>" for r in rows)
    return ("<p>Per-pixel calibration of the posterior standard deviation inside the evaluation crop "
            "(pixels of all test volumes pooled). A perfectly calibrated posterior estimated from K samples "
            "reaches the fraction and ratio in the second-to-last column (not 95 % / 1: the std comes from K "
            "draws, the error is that of the K-sample mean's magnitude; computed at high SNR, so background pixels "
            "only approximately follow it); fewer pixels within 2 std and a larger "
            f"ratio mean the std under-states the error.</p><table>{head}{body}</table>")
