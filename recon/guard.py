"""The guarded reconstruction (``mridiff recon --method auto``): per slice, let held-out k-space decide between the
diffusion posterior mean and the classical reconstructions, and flag scans unlike the prior's training set.

A diffusion prior fills unmeasured k-space with what it learned; on anatomy it never saw it can invent structure,
where L1-wavelet and CG-SENSE degrade gracefully. Per slice (``recon.selfval`` for the estimates):

1. hold out ``fraction`` of the measured lines outside the calibration block (``folds`` disjoint sets, fewer
   where the mask is too sparse for them, seeded by (file, slice, seed));
2. reconstruct from the rest with every candidate: the diffusion posterior (K samples), L1-wavelet at each
   weight of ``l1_grid`` (the weight is chosen per slice by validation, never by ground truth) and CG-SENSE;
3. score each by its held-out error (``selfval.validation_error``, noise subtracted, summed over folds). Mode
   ``blend`` (default): the best classical candidate is mixed with the posterior mean, x = alpha x_diffusion +
   (1 - alpha) x_classical, alpha in [0, 1] minimising the held-out error of the mix (``selfval.blend_weight``:
   one number fitted on all held-out lines, unbiased by their noise); alpha = 1 is the unguarded posterior,
   alpha = 0 the classical reconstruction. Mode ``choose``: the candidate with the smallest held-out error (ties:
   diffusion first). Each candidate's whole-image PSNR is also estimated (``est_psnr``, the CG-SENSE image's
   maximum as range: ``selfval.ratio_estimate`` with the error the posterior expects of that candidate as
   auxiliary variable, ``selfval.expected_energy``; ``est_mse_spread``: the posterior spread as auxiliary for
   every candidate, as before 2026-12-03; the stratified direct estimate
   with one posterior sample);
4. refit on all measured lines (the diffusion posterior is always refit: it is the unguarded result, written as
   ``reconstruction_diffusion`` with its raw std ``reconstruction_diffusion_std``).

The out-of-distribution flag (``ood_flag``): with a reference for the prior (``recon.ood``: ``mridiff
ood-reference`` writes ``<checkpoint>.ood.json``; the shipped priors have one), it fires when the denoiser changes
the slice's CG-SENSE image more than ``flag_score`` times as much as it changes the prior's own validation slices
(``ood_score_ratio``). Without a reference it falls back to the held-out lines: the diffusion's held-out error
exceeds the best classical one by more than ``flag_db`` dB (``ood_db``), or what the posterior's own spread
predicts by more than a factor ``flag_ratio`` (``calibration_ratio``, ``selfval.posterior_predicted``: a
confident prior that is wrong). Both scores are always recorded. A slice the score flags does not use the
prior at all (``flagged="classical"``), because on such scans the held-out lines, 4-6 per slice, are too few to
bound what the prior invents between them (BENCHMARKS.md, "Unseen anatomy": the blend's worst slices there were
1.4-5.8 dB below CG-SENSE). It returns the classical candidate with the smallest cross-validated error instead:
``fallback_folds`` folds hold out every sampled line outside the calibration block once (``selfval.cv_splits``),
so the choice rests on all of them, not on the 4-6 lines that once picked L1-wavelet 2.9 dB below CG-SENSE on a
knee. Only the classical candidates are rerun, ``fallback_folds`` x (len(l1_grid) + 1) times, on flagged slices.
With ``fallback_mix`` the flagged slice gets the cross-validated mix of the best candidate and the best of the
other classical family instead (``classical_mix``).
With ``partner_cv`` (default) the same cross-validation also picks the blend's classical partner on the slices
that are not flagged: the 4-6 held-out lines had paired the posterior with L1-wavelet 2.9 dB below CG-SENSE on a
knee (BENCHMARKS.md, "The blend's classical partner by cross-validation"). It reruns the classical candidates
``fallback_folds`` times on every slice; the blend weight alpha is still fitted on the guard's held-out lines,
where the posterior was rerun without them.
The defaults are set a priori, not tuned (a factor 2 on the whole-image score; 0 dB; a factor 4 = 2x the error
amplitude the posterior claims);
BENCHMARKS.md, "Unseen anatomy", measures what they give: the held-out-line rule rests on 4-6 held-out lines
per slice and flagged 22-35 % of the matched slices.

The written std (``reconstruction_std``) is made honest with the same held-out lines: the posterior std is
scaled by sqrt(max(1, calibration_ratio)), and where a classical reconstruction was chosen, the disagreement
|x_out - x_diffusion| is added in quadrature, so invented structure shows up in the map.

Per slice, ``SliceResult.info`` records the choice, the reason, every candidate's held-out error and estimated
PSNR, the flag and its scores, and per held-out line (``held_out_lines``: its k-space radius, each candidate's
error there and what the posterior without its fold expected there); ``recon.pipeline`` writes them to the output's ``slice_info`` attr and warns on
flagged slices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from . import baselines, ood, selfval
from .diffusion import DiffusionRecon
from .pipeline import SliceResult
from .samplers.common import derive_seed


@dataclass(frozen=True)
class GuardOptions:
    """Settings of the guarded reconstruction (module doc)."""

    fraction: float = 0.15      # of the sampled lines outside the calibration block, per fold
    folds: int = 2
    l1_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    l1_iters: int = 100
    sense_iters: int = 30
    sense_lambda: float = 1e-2
    flag_db: float = 0.0        # flag when diffusion's held-out error > best classical's by this many dB
    flag_ratio: float = 4.0     # flag when diffusion's held-out error > this x its posterior-predicted error
    flag_score: float = 2.0     # with an OOD reference (recon.ood): flag when the slice's score > this x its median
    flagged: str = "classical"  # slices flagged by that score: classical = the prior is not used (the classical
                                # candidate with the smallest cross-validated error); guard = decided like the others
    fallback_folds: int = 5     # that choice: K-fold cross-validation over every sampled line outside the
                                # calibration block (selfval.cv_splits); 0 = the guard's own held-out folds
    fallback_mix: bool = False  # that choice: the cross-validated mix of the best L1-wavelet and CG-SENSE
                                # (classical_mix) instead of one candidate
    fallback_rule: str = "min"  # that choice: min = the smallest cross-validated error; 1se = CG-SENSE unless an
                                # L1-wavelet weight beats it by more than one standard error (one_se_choice)
    partner_cv: bool = True     # blend mode, slices not flagged: the classical partner of the blend chosen by the
                                # same cross-validation (fallback_folds; 0: the guard's held-out lines)
    mode: str = "blend"         # blend: alpha x_diffusion + (1 - alpha) x_best_classical, alpha by held-out lines;
                                # choose: the candidate with the smallest held-out error
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction < 0.5:
            raise ValueError(f"guard fraction must be in (0, 0.5), got {self.fraction}")
        if self.mode not in ("blend", "choose"):
            raise ValueError(f"guard mode must be 'blend' or 'choose', got {self.mode!r}")
        if self.fallback_rule not in ("min", "1se"):
            raise ValueError(f"guard fallback_rule must be 'min' or '1se', got {self.fallback_rule!r}")
        if self.flagged not in ("classical", "guard"):
            raise ValueError(f"guard flagged must be 'classical' or 'guard', got {self.flagged!r}")
        if not self.flag_score > 0:
            raise ValueError(f"guard flag_score must be > 0, got {self.flag_score}")
        if self.fallback_folds == 1 or self.fallback_folds < 0:
            raise ValueError(f"guard fallback_folds must be 0 or >= 2, got {self.fallback_folds}")
        if self.folds < 1 or not self.l1_grid or min(self.l1_grid) <= 0:
            raise ValueError(f"guard needs folds >= 1 and positive L1 weights, got {self.folds}, {self.l1_grid}")


def held_out_flag(ood_db: float, calibration_ratio: float, o: GuardOptions) -> bool:
    """The held-out-line rule (the flag of a prior without an OOD reference; module doc)."""
    return bool(ood_db > o.flag_db or (math.isfinite(calibration_ratio) and calibration_ratio > o.flag_ratio))


def classical_mix(errors: dict[str, float], residuals: dict[str, torch.Tensor]) -> tuple[str, str, float]:
    """Stacking of the classical candidates by cross-validation (``GuardOptions.fallback_mix``): a = the candidate
    with the smallest cross-validated error, b = the best candidate of the other family (CG-SENSE for an
    L1-wavelet weight and vice versa; their errors differ most in kind), and the weight w in [0, 1] of
    w x_a + (1 - w) x_b that minimises the held-out error of the mix over every held-out line
    (``selfval.blend_weight``: the residuals are affine in x, so no reconstruction is rerun). Returns (a, b, w);
    w = 1 is a alone. A mix's error energy is at most the larger of the two, so one wrong pick near the
    margin costs less than choosing one (Breiman 1996, stacked regressions)."""
    a = min(errors, key=errors.get)
    family = a.split(":", 1)[0]
    others = [c for c in errors if c.split(":", 1)[0] != family]
    if not others:
        return a, a, 1.0
    b = min(others, key=errors.get)
    return a, b, selfval.blend_weight(residuals[a], residuals[b])


def one_se_choice(errors: dict[str, float], per_line: dict[str, torch.Tensor]) -> str:
    """The one-standard-error rule of cross-validation (Breiman et al. 1984, CART sec. 3.4.3; Hastie, Tibshirani
    and Friedman 2009, sec. 7.10) with the prior-free CG-SENSE as the simple model (``GuardOptions.fallback_rule
    = "1se"``): CG-SENSE, unless the L1-wavelet weight with the smallest cross-validated error beats it by more
    than one standard error of the paired per-line differences d_j = e_L1(j) - e_SENSE(j) over the n held-out
    lines, sum_j d_j < -sqrt(n) sd(d). ``errors``: {candidate: cross-validated error}; ``per_line``: {candidate:
    (n,) error energy per held-out line, the same lines for every candidate}. Why: with 7-15 lines outside the
    calibration block (8x), the smallest error picks a sparsity prior the data cannot vouch for (BENCHMARKS.md,
    "Flagged slices"), and a slice the guard does not trust the prior on should get the least assuming image
    unless the data say otherwise."""
    l1 = [c for c in errors if c != "sense"]
    if "sense" not in errors or not l1:
        return min(errors, key=errors.get)
    best = min(l1, key=errors.get)
    d = (per_line[best] - per_line["sense"]).double()
    n = d.numel()
    if n < 2:
        return "sense"
    return best if float(d.sum()) < -math.sqrt(n) * float(d.std()) else "sense"


def _db(a: float, b: float, floor: float) -> float:
    """10 log10(a / b) with both floored at ``floor`` > 0: held-out errors can be <= 0 once the noise is
    subtracted (a reconstruction within the noise), and differences below the floor mean nothing."""
    return 10 * math.log10(max(a, floor) / max(b, floor))


class GuardedRecon:
    """A ``SliceMethod`` (``recon.pipeline``): the guarded reconstruction of the module doc."""

    uses_noise_std = True

    def __init__(self, diffusion: DiffusionRecon, options: GuardOptions = GuardOptions(),
                 reference: ood.OODReference | None = None):
        self.diffusion = diffusion
        self.options = options
        self.reference = reference
        self.candidates = ["diffusion"] + [f"l1-wavelet:{lam:g}" for lam in options.l1_grid] + ["sense"]

    def describe(self) -> dict:
        ref = None if self.reference is None else {"median": self.reference.median, "data": self.reference.data,
                                                   "slices": self.reference.slices}
        return {"guard": {**asdict(self.options), "ood_reference": ref}}

    def _classical(self, name: str, k, mask, maps) -> torch.Tensor:
        o = self.options
        if name == "sense":
            return baselines.cg_sense(k, mask, maps, iters=o.sense_iters, lam=o.sense_lambda)
        lam = float(name.split(":", 1)[1])
        return baselines.l1_wavelet(k, mask, maps, lam=lam, iters=o.l1_iters)

    def __call__(self, k, mask, maps, ctx) -> SliceResult:
        return self.batch([(k, mask, maps, ctx)])[0]

    def batch(self, items: list[tuple]) -> list[SliceResult]:
        o = self.options
        splits = [self.held_out_splits(m, ctx) for _, m, _, ctx in items]
        full = self.diffusion.batch(items)
        held: dict[tuple[int, int], SliceResult] = {}  # (item, fold) -> diffusion without the fold's lines
        for f in range(o.folds):  # a sparse mask may allow fewer folds (selfval.split_mask)
            idx = [n for n, s in enumerate(splits) if len(s) > f]
            if idx:
                red = [(items[n][0] * splits[n][f].recon_mask, splits[n][f].recon_mask, items[n][2], items[n][3])
                       for n in idx]
                for n, r in zip(idx, self.diffusion.batch(red)):
                    held[(n, f)] = r
        return [self._decide(items[n], splits[n], full[n], [held[(n, f)] for f in range(len(splits[n]))])
                for n in range(len(items))]

    def held_out_splits(self, mask, ctx) -> list:
        """The guard's held-out folds of a slice (``fraction``, ``folds``; seeded by file, slice and ``seed``)."""
        o = self.options
        return selfval.split_mask(mask, o.fraction, derive_seed(ctx["file"], ctx["slice"], "guard", o.seed), o.folds)

    def cv_splits(self, mask, ctx) -> list:
        """The flagged slices' cross-validation folds (``fallback_folds``; [] when off or the lines are too few)."""
        o = self.options
        if o.fallback_folds < 2:
            return []
        return selfval.cv_splits(mask, o.fallback_folds, derive_seed(ctx["file"], ctx["slice"], "guard-cv", o.seed))

    @staticmethod
    def _expected_at(x, samples, maps, mask, positions, spread) -> torch.Tensor:
        """The error energy the posterior ``samples`` expect of reconstruction x (None: their mean) at each of
        ``positions`` of the mask's (h, w) (``selfval.expected_energy``, ``spread`` its ``spread_energy``),
        float64 (n,); NaN without samples."""
        if samples is None:
            return torch.full((positions.numel(),), math.nan, dtype=torch.float64)
        e = selfval.expected_energy(x, samples, maps, tuple(mask.shape), spread=spread)
        return e[positions.to(samples.device)].cpu()

    @classmethod
    def _expected(cls, x, samples, maps, mask, positions, spread) -> float:
        """``_expected_at`` summed over ``positions``."""
        return float(cls._expected_at(x, samples, maps, mask, positions, spread).sum())

    @staticmethod
    def _spread(samples, maps, mask):
        """``selfval.spread_energy`` of one posterior's samples (None without samples), once for all candidates."""
        return None if samples is None else selfval.spread_energy(samples, maps, tuple(mask.shape))

    def classical_cv(self, item, splits: list, candidates: list[str]
                     ) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({candidate: held-out error energy (noise subtracted) summed over ``splits``}, {candidate: its held-out
        residuals y - F S x on every split's held-out entries, concatenated over the splits (1-D complex; for
        ``classical_mix``)}, {candidate: the error energy of each held-out position, concatenated over the splits
        (float64; for ``one_se_choice``)}), each classical candidate reconstructed without its split's lines;
        ({}, {}, {}) without splits."""
        k, mask, maps, ctx = item
        sigma = float(ctx.get("noise_std", math.nan))
        if not math.isfinite(sigma):  # NaN errors would make min() pick the first candidate silently
            raise ValueError(f"{ctx.get('file')} slice {ctx.get('slice')}: the held-out errors need the noise std, "
                             f"got {sigma} (a SliceMethod that uses them sets uses_noise_std = True)")
        err = {c: 0.0 for c in candidates} if splits else {}
        resid: dict[str, list] = {c: [] for c in err}
        lines: dict[str, list] = {c: [] for c in err}
        for split in splits:
            kr = k * split.recon_mask
            for c in candidates:
                x = self._classical(c, kr, split.recon_mask, maps)
                v = selfval.validation_error(k, maps, split, x, sigma)
                err[c] += float(v["error"])
                resid[c].append(v["residual"].reshape(-1))
                lines[c].append(v["per_position"].reshape(-1))
        return err, {c: torch.cat(r) for c, r in resid.items()}, {c: torch.cat(r) for c, r in lines.items()}

    def cv_choice(self, errors: dict[str, float], per_line: dict[str, torch.Tensor]) -> str:
        """The classical candidate ``fallback_rule`` picks from cross-validated errors (min, or ``one_se_choice``)."""
        if self.options.fallback_rule == "1se":
            return one_se_choice(errors, per_line)
        return min(errors, key=errors.get)

    def _decide(self, item, splits, full: SliceResult, held_runs: list) -> SliceResult:
        k, mask, maps, ctx = item
        o = self.options
        sigma = float(ctx["noise_std"])
        diff_std = full.extra.get("reconstruction_std")
        extra = {"reconstruction_diffusion": full.image.abs()}
        if diff_std is not None:
            extra["reconstruction_diffusion_std"] = diff_std
        sense = self._classical("sense", k, mask, maps)  # all lines: also the OOD score's prior-free image
        score = ood.slice_score(self.diffusion.denoiser, sense, ctx)
        score_ratio = score / self.reference.median if self.reference is not None else math.nan
        score_flag = bool(score_ratio > o.flag_score) if self.reference is not None else None
        refit = {"sense": sense}  # classical candidates reconstructed from all lines, each once

        def with_all_lines(c):
            if c not in refit:
                refit[c] = self._classical(c, k, mask, maps)
            return refit[c]

        if not splits:
            info = {"choice": "diffusion", "reason": "no held-out lines possible (only the calibration block is "
                    "sampled): unguarded", "ood_score": score, "ood_score_ratio": score_ratio,
                    "ood_flag": score_flag}
            if diff_std is not None:
                extra["reconstruction_std"] = diff_std
            return SliceResult(full.image, extra, info=info)
        held = {c: 0.0 for c in self.candidates}  # held-out error energy (noise subtracted), summed over folds
        direct = {c: 0.0 for c in self.candidates}  # stratified estimate outside the mask, mean over folds
        aux = {c: 0.0 for c in self.candidates}  # the held-out error the posterior without the fold expects of each
        n_val = 0
        noise = noise_var = 0.0  # the noise energy expected on the held-out lines, and its variance
        resid: dict[str, list] = {c: [] for c in self.candidates}  # held-out residual vectors, per fold
        # per held-out position over the folds (recorded for diagnosis): its k-space radius, each candidate's
        # error energy there and what the posterior without the fold expected of it there
        radius = selfval.radius(tuple(mask.shape[-2:])).reshape(-1)
        lines = {"radius": [], "error": {c: [] for c in self.candidates},
                 "expected": {c: [] for c in self.candidates}}
        for split, hd in zip(splits, held_runs):
            kr = k * split.recon_mask
            spread = self._spread(hd.samples, maps, mask)
            xs = {"diffusion": hd.image}
            for c in self.candidates[1:]:
                xs[c] = self._classical(c, kr, split.recon_mask, maps)
            for c, x in xs.items():
                v = selfval.validation_error(k, maps, split, x, sigma)
                held[c] += float(v["error"])
                direct[c] += float(v["unmeasured"]) / len(splits)
                resid[c].append(v["residual"].reshape(-1))
                at = self._expected_at(None if c == "diffusion" else x, hd.samples, maps, mask, split.val_index,
                                       spread)
                aux[c] += float(at.sum())
                lines["error"][c] += v["per_position"].reshape(-1).tolist()
                lines["expected"][c] += at.tolist()
            lines["radius"] += radius[split.val_index.numpy()].tolist()
            noise += v["noise"]
            noise_var += v["noise_var"]
            n_val += split.n_val
        predicted = aux["diffusion"]  # what the diffusion posterior (without the fold) predicts on the held-out lines
        # what the full posterior expects of each candidate (refit on all lines) outside the mask; its own spread
        # there for the posterior mean
        unmeasured = torch.nonzero((mask.reshape(-1) == 0).cpu()).reshape(-1)
        spread = self._spread(full.samples, maps, mask)
        # each candidate from all lines (None: the posterior mean); the classical ones are refit only for these
        # estimates, so not without samples
        x_all = {c: None if c == "diffusion" else with_all_lines(c) for c in self.candidates} \
            if full.samples is not None else {}
        aux_out = {c: self._expected(x_all[c], full.samples, maps, mask, unmeasured, spread) if x_all else math.nan
                   for c in self.candidates}
        spread_out = aux_out["diffusion"]
        classical = {c: e for c, e in held.items() if c != "diffusion"}
        best_c = min(classical, key=classical.get)
        # flagged by the score (flagged="classical"): the prior is not used, and cross-validation over every sampled
        # line picks the classical reconstruction; partner_cv: the same folds pick the blend's classical partner
        fallback = bool(score_flag) and o.flagged == "classical"
        use_cv = fallback or (o.partner_cv and o.mode == "blend")
        cv_error, cv_resid, cv_lines = self.classical_cv(item, self.cv_splits(mask, ctx), list(classical)) \
            if use_cv else ({}, {}, {})
        cv_best = min(cv_error, key=cv_error.get) if cv_error else best_c
        partner = best_c if fallback else cv_best  # a flagged slice is not blended: alpha is set to 0 below
        r_d, r_c = torch.cat(resid["diffusion"]), torch.cat(resid[partner])
        alpha = selfval.blend_weight(r_d, r_c)
        held["blend"] = float(((alpha * r_d + (1 - alpha) * r_c).abs() ** 2).sum()) - noise  # in-sample (1 parameter)
        # each candidate's whole-image error: the ratio estimate with what the posterior expects of that candidate
        # as auxiliary (selfval.expected_energy); "spread": the posterior's own spread for every candidate
        # (a held-out error below its noise standard error rests on that: selfval.ratio_estimate's floor)
        floor = math.sqrt(noise_var)
        energy = {c: selfval.ratio_estimate(held[c], aux[c], aux_out[c], floor) for c in self.candidates}
        energy["blend"] = selfval.ratio_estimate(held["blend"], predicted, spread_out, floor)
        energy_spread = {c: selfval.ratio_estimate(e, predicted, spread_out, floor) for c, e in held.items()}
        if not all(math.isfinite(e) for e in energy.values()):  # one posterior sample: no spread to lean on
            energy = energy_spread = {**direct, "blend": math.nan}
        shape = tuple(k.shape[-2:])
        peak = float(sense.abs().max())  # one range for every candidate, from the prior-free image
        to_mse = lambda en: {c: selfval.estimated_mse(e, shape) if math.isfinite(e) else math.nan  # noqa: E731
                             for c, e in en.items()}
        mse, mse_spread = to_mse(energy), to_mse(energy_spread)
        # recorded, not used: the share of each candidate's error that survives the magnitude, as the full
        # posterior sees it (selfval.magnitude_fraction; fastMRI scores magnitudes), and the estimate times it
        frac = {c: selfval.magnitude_fraction(x_all[c], full.samples) if x_all else math.nan for c in self.candidates}
        mse_mag = {c: mse[c] * frac[c] for c in self.candidates}
        est = {c: selfval.estimated_psnr(v, peak) if math.isfinite(v) else math.nan for c, v in mse.items()}
        # below 5 % of the held-out noise energy two errors are the same (and never below 1e-12 x the signal)
        ood_db = _db(held["diffusion"], classical[best_c], max(0.05 * noise, 1e-12 * float((k.abs() ** 2).sum()), 1e-30))
        ratio = held["diffusion"] / predicted if predicted > 0 and math.isfinite(predicted) else math.nan
        flag = score_flag if score_flag is not None else held_out_flag(ood_db, ratio, o)
        # not flagged, choose: the smallest held-out error on the same lines (the ratio estimate ranks them the same
        # way); blend: the weight alpha that minimises the held-out error of alpha x_diffusion + (1 - alpha) x_partner
        mix = None  # (a, b, w): the flagged slice's cross-validated mix w x_a + (1 - w) x_b (fallback_mix)
        if fallback:
            choice, alpha = (self.cv_choice(cv_error, cv_lines) if cv_error else best_c), 0.0
            if cv_error and o.fallback_mix:
                mix = classical_mix(cv_error, cv_resid)
                choice = mix[0] if mix[2] >= 1 else mix[1] if mix[2] <= 0 else "classical-mix"
        elif o.mode == "choose":
            choice = min(self.candidates, key=lambda c: held[c])  # stable: diffusion first on ties
            alpha = 1.0 if choice == "diffusion" else 0.0
        else:
            choice = "diffusion" if alpha >= 1 else partner if alpha <= 0 else "blend"
        if choice == "diffusion":
            image = full.image
            reason = f"diffusion: held-out error {ood_db:+.2f} dB against the best classical ({best_c})"
        elif choice == "blend":
            image = alpha * full.image + (1 - alpha) * with_all_lines(partner)
            how = f", {partner} chosen by {o.fallback_folds}-fold cross-validation" if cv_error else ""
            reason = (f"blend {alpha:.2f} x diffusion + {1 - alpha:.2f} x {partner}: the held-out lines' best mix"
                      f"{how} (diffusion alone {ood_db:+.2f} dB against {best_c})")
        else:
            not_used = (f"out of distribution (the denoiser changes this slice {score_ratio:.1f} x as much as the "
                        f"prior's validation slices), so the prior is not used")
            folds = f"{o.fallback_folds} folds, every sampled line held out once"
            if choice == "classical-mix":
                a, b, w = mix
                image = w * with_all_lines(a) + (1 - w) * with_all_lines(b)
                reason = (f"{not_used}: {w:.2f} x {a} + {1 - w:.2f} x {b}, the mix with the smallest cross-validated "
                          f"error ({folds}; diffusion {ood_db:+.2f} dB against {best_c})")
            else:
                name, _, lam = choice.partition(":")
                image = with_all_lines(choice)
                what = f"{name}{f' (weight {lam})' if lam else ''}"
                how = f"cross-validated error ({folds})" if cv_error else "held-out error"
                if fallback and cv_error and o.fallback_rule == "1se":
                    reason = (f"{not_used}: {what}, by the one-standard-error rule on the cross-validated errors "
                              f"({folds}; CG-SENSE unless an L1-wavelet weight is better by more than one standard "
                              f"error) (diffusion {ood_db:+.2f} dB against {best_c})")
                elif fallback:
                    reason = (f"{not_used}: {what}, the smallest {how} of the classical candidates (diffusion "
                              f"{ood_db:+.2f} dB against {best_c})")
                elif o.mode == "blend":  # alpha = 0: the mix with the partner gives the posterior no weight
                    reason = (f"{what}: the held-out lines' best mix gives the diffusion posterior no weight "
                              f"(diffusion alone {ood_db:+.2f} dB against {best_c})")
                else:
                    reason = f"{what}: its held-out error is {ood_db:.2f} dB below the diffusion posterior's"
        if diff_std is not None:
            scale = math.sqrt(max(1.0, ratio)) if math.isfinite(ratio) else 1.0
            std = diff_std * scale
            if choice != "diffusion":
                std = torch.sqrt(std ** 2 + (image - full.image).abs() ** 2)
            extra["reconstruction_std"] = std
        info = {"choice": choice, "alpha": alpha, "blend_with": partner, "reason": reason, "ood_flag": flag,
                "ood_db": ood_db, "calibration_ratio": ratio, "ood_score": score, "ood_score_ratio": score_ratio,
                "held_out_positions": n_val, "folds": len(splits), "est_psnr": est, "est_mse": mse,
                "est_mse_spread": mse_spread, "est_mse_magnitude": mse_mag, "magnitude_fraction": frac,
                "est_peak": peak, "expected_held_out": aux,
                "expected_unmeasured": aux_out,
                "held_out_error": held, "cv_error": cv_error,
                "cv_mix": None if mix is None else {"a": mix[0], "b": mix[1], "weight": mix[2]},
                "direct_estimate": direct, "predicted_held_out": predicted, "held_out_lines": lines,
                "held_out_noise_var": noise_var,
                "predicted_unmeasured": spread_out}
        return SliceResult(image, extra, info=info)
