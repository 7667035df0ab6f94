"""Training losses. Each takes (denoiser, batch, generator) and returns a per-sample loss (B,).

``dsm`` needs clean targets (the supervised reference). ``gsure``, ``ambient`` and ``tweedie`` see only what a
scanner gives (k-space, mask, coil maps, noise level) and are handed ``batch.without_target()``.
"""

from .ambient import ambient_loss
from .common import edm_weight, sample_sigma
from .dsm import dsm_loss
from .gsure import gsure_loss, gsure_terms, network_input, output_and_directional
from .tweedie import tweedie_loss

__all__ = ["ambient_loss", "edm_weight", "sample_sigma", "dsm_loss", "gsure_loss", "gsure_terms", "network_input",
           "output_and_directional", "tweedie_loss"]


def make_loss(name: str, opts, sigma_data: float = 0.5, residual_weight: float = 0.0):
    """The per-sample loss callable (denoiser, batch, generator) -> (B,) for a config's loss name/options.

    ``residual_weight`` > 0 (view-composed priors): adds weight * mean|F_theta|^2 of the residual's first
    call in the loss (its output at the loss's own input; ``nn.composed`` explains the units).
    """
    base = _base_loss(name, opts, sigma_data)
    if residual_weight <= 0:
        return base

    def regularised(d, b, g):
        if not hasattr(d, "recording"):
            raise RuntimeError("residual_weight > 0 needs a view-composed denoiser with a residual")
        with d.recording() as rec:
            loss = base(d, b, g)
        if not rec:
            raise RuntimeError("residual_weight > 0 needs a view-composed denoiser with a residual")
        return loss + residual_weight * rec[0]

    return regularised


def _base_loss(name: str, opts, sigma_data: float):
    """The loss callable, its keyword options taken by name from the typed ``LossOptions``."""
    sched = dict(sigma_data=sigma_data, p_mean=opts.p_mean, p_std=opts.p_std)
    stein = dict(inverse=opts.inverse(), divergence=opts.divergence, fd_rel=opts.fd_rel, weighted=opts.weighted)
    if name == "dsm":
        return lambda d, b, g: dsm_loss(d, b, g, **sched)
    if name == "gsure":
        return lambda d, b, g: gsure_loss(d, b.without_target(), g, **sched, **stein)
    if name == "ambient":
        return lambda d, b, g: ambient_loss(d, b.without_target(), g, further_fraction=opts.further_fraction,
                                            **sched, **stein)
    if name == "tweedie":
        return lambda d, b, g: tweedie_loss(d, b.without_target(), g, **sched,
                                            consistency_fraction=opts.consistency_fraction,
                                            consistency_weight=opts.consistency_weight,
                                            t_ratio=opts.consistency_t_ratio, consistency_grad=opts.consistency_grad,
                                            above=opts.tweedie_above, stein=stein)
    raise ValueError(f"unknown loss {name!r}")
