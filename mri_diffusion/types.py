"""Shared types and the tensor conventions every module follows.

| tensor       | shape          | dtype                                                   |
|--------------|----------------|---------------------------------------------------------|
| image x      | (B, H, W)      | complex64                                               |
| k-space y    | (B, C, H, W)   | complex64, C = 1 single-coil, zeros off the mask        |
| coil maps S  | (B, C, H, W)   | complex64, sum_c |S_c|^2 = 1 on the support            |
| mask M       | (B, 1, 1, W)   | float32 in {0, 1}; 2-D masks (B, 1, H, W) allowed       |
| density p    | like M         | float32, E[M] under the mask sampler (GSURE weights)    |
| sigma        | (B,)           | float32, VE: x_sigma = x + sigma * eps, eps i.i.d. N(0,1) per real channel |
| net input    | (B, 2, H, W)   | float32, only inside nn/precond.py                      |

FFTs follow fastMRI (centred, orthonormal). Two noise conventions, never mixed up:
- the diffusion level ``sigma`` is the standard deviation per *real channel* (EDM on 2 channels);
- measurement noise ``noise_std`` = sigma_y is CN(0, sigma_y^2) per k-space entry (E|n|^2 = sigma_y^2),
  i.e. sigma_y / sqrt(2) per real channel (``losses.common.per_channel_noise``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch


class DataError(Exception):
    """Bad input data; the message names the file (and slice, key, shape). ``data_prep.fastmri_h5`` raises it for
    files, ``mri_diffusion.measurement`` for slices that cannot be conditioned."""


class Denoiser(Protocol):
    """D(x, sigma) ~ E[x0 | x0 + sigma n = x]; x complex (B, H, W), sigma (B,) float32."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector (B,) as (B, 1, ..., 1) in the real dtype of ``like`` (B, ...), for broadcasting."""
    return v.to(like.real.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def score(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The one place the score is derived from the denoiser (Tweedie): (D(x, s) - x) / s^2."""
    return (denoiser(x, sigma) - x) / bcast(sigma, x) ** 2


@dataclass(frozen=True)
class MRIBatch:
    """What a scanner gives for a batch of slices, plus (optionally, kept apart) a clean target.

    kspace (B, C, H, W), mask (B, 1, 1, W), maps (B, C, H, W), density like mask, noise_std (B,).
    ``target`` (B, H, W) is only present for supervised losses and evaluation; self-supervised losses
    must never read it (``without_target`` strips it).
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor
    density: torch.Tensor
    noise_std: torch.Tensor
    scale: torch.Tensor | None = None
    target: torch.Tensor | None = None
    ids: tuple = field(default_factory=tuple)

    def to(self, device) -> "MRIBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, kspace=mv(self.kspace), mask=mv(self.mask), maps=mv(self.maps),
                       density=mv(self.density), noise_std=mv(self.noise_std), scale=mv(self.scale),
                       target=mv(self.target))

    def without_target(self) -> "MRIBatch":
        return replace(self, target=None)

    @property
    def batch_size(self) -> int:
        return self.kspace.shape[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.kspace.shape[-2:])
