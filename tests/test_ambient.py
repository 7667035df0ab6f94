"""The ambient loss is an unbiased estimate of the weighted error over ALL of M, up to a constant that does not
depend on the denoiser (so it no longer rewards passing the input's noise through on the lines it was shown)."""

import math
import sys
from pathlib import Path

import torch

from mri_diffusion.losses.ambient import ambient_loss
from mri_diffusion.losses.common import edm_weight, re_inner
from mri_diffusion.physics import Sense

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gsure_inverse import realistic_batch, shrink_denoiser  # noqa: E402

import torch.nn.functional as F  # noqa: E402


class Recorder:
    """Wraps a denoiser and keeps the output of its first call (the loss's h; the second call is the fd probe)."""

    def __init__(self, fn):
        self.fn, self.h = fn, None

    def __call__(self, u, sigma):
        out = self.fn(u, sigma)
        if self.h is None:
            self.h = out
        return out


def copy_like(u, s):
    """Nearly the identity: passes the input (and its noise) through, as a denoiser that copies noise would."""
    return 0.95 * u + 0.05 * torch.tanh(u.real)


def smoothing(u, s):
    """Averages the input's noise away (a 5 x 5 box blur, then a mild nonlinearity): copies no noise."""
    re_im = torch.stack([u.real, u.imag], 1)
    b = F.avg_pool2d(re_im, 5, 1, 2, count_include_pad=False)
    return torch.complex(b[:, 0], b[:, 1]) * (1 + 0.1 * torch.tanh(b[:, 0]))


def _gaps(denoiser, batch, x, sigma):
    """Per draw: (ambient loss - true error, naive loss - true error), both unscaled (sums over k-space)."""
    rec = Recorder(denoiser)
    npix = x.shape[-2] * x.shape[-1]
    loss = ambient_loss(rec, batch, torch.Generator().manual_seed(3), sigma=sigma, further_fraction=0.3)
    loss = loss * npix / edm_weight(sigma)
    A = Sense(batch.maps, batch.mask)
    Wt = batch.mask / batch.density
    err = A(rec.h - x)
    truth = re_inner(err, Wt * err)
    r = A(rec.h) - batch.kspace
    naive = re_inner(r, Wt * r)  # the old loss: error against the noisy y on all of M, input lines included
    return loss + re_inner(A(x), Wt * A(x)) - truth, naive - truth


def test_ambient_loss_minus_true_error_is_the_same_constant_for_two_denoisers():
    batch, x, _ = realistic_batch(300, 40, 4.0, 0.05)
    sigma = torch.full((300,), 1.5 * 0.05 / math.sqrt(2))
    gap_copy, naive_copy = _gaps(copy_like, batch, x, sigma)
    gap_smooth, naive_smooth = _gaps(smoothing, batch, x, sigma)
    z = lambda d: float(d.mean() / (d.std() / math.sqrt(d.numel())))  # noqa: E731  (paired: same noise draws)
    # unbiased: both gaps are 0 in expectation (the constant -||W^1/2 A x||^2 was added back)
    assert abs(z(gap_copy)) < 3 and abs(z(gap_smooth)) < 3
    assert abs(z(gap_copy - gap_smooth)) < 3
    # the test can fail: the naive loss's gap depends on the denoiser (copying the seen lines' noise pays)
    assert z(naive_smooth - naive_copy) > 5


def test_ambient_with_no_further_subsampling_is_gsure():
    from mri_diffusion.losses.gsure import gsure_loss

    batch, _, _ = realistic_batch(2, 24, 4.0, 0.05)
    sigma = torch.full((2,), 0.2)
    a = ambient_loss(shrink_denoiser, batch, torch.Generator().manual_seed(0), sigma=sigma, further_fraction=0.0)
    g = torch.Generator().manual_seed(0)
    torch.rand((2, 24), generator=g)  # ambient draws its (empty) further mask first
    b = gsure_loss(shrink_denoiser, batch, g, sigma=sigma)
    assert torch.allclose(a, b, rtol=1e-5)
