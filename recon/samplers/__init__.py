"""Samplers over one denoiser interface D(x, sigma)."""

from .prior import edm_heun, karras_sigmas
from .common import (SAMPLER_ALIASES, SAMPLER_NAMES, CountingDenoiser, NoiseSource, canonical_sampler, default_sigmas,
                     derive_seed, geometric_sigmas, get_sampler, network_calls)
from .dds import sample as sample_dds
from .dps import sample as sample_dps
from .pc import sample as sample_pc
from .langevin import sample as sample_langevin

__all__ = ["edm_heun", "karras_sigmas", "SAMPLER_NAMES", "SAMPLER_ALIASES", "CountingDenoiser", "NoiseSource",
           "canonical_sampler", "default_sigmas", "derive_seed", "geometric_sigmas", "get_sampler", "network_calls",
           "sample_dds", "sample_dps", "sample_pc", "sample_langevin"]
