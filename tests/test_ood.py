"""The OOD score (recon/ood.py) against a Gaussian prior whose denoiser is exact, and its reference file."""

import pytest
import torch

from recon.ood import OODReference, denoiser_change, find_reference, sidecar


def gaussian_denoiser(a):
    """The exact denoiser of x ~ CN(0, 2 a^2 I) (real and imaginary parts N(0, a^2))."""
    return lambda x, sigma: x * a ** 2 / (a ** 2 + sigma.reshape(-1, 1, 1) ** 2)


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_score_of_the_gaussian_prior_matches_the_closed_form(sigma):
    # per pixel E||D(x + s n) - x||^2 / (2 s^2) = (s^2 |x|^2 / 2 + a^4) / (a^2 + s^2)^2; with E|x|^2 = 2 c^2 a^2
    # (c: how much wider than the prior the images are) the score is (c^2 s^2 a^2 + a^4) / (a^2 + s^2)^2
    a = 0.2
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(6, 64, 64, generator=g), torch.randn(6, 64, 64, generator=g)) * a
    D = gaussian_denoiser(a)
    for c in (1.0, 3.0):
        s = denoiser_change(D, c * x, seeds=list(range(100, 106)), sigma=sigma, draws=4)  # not the seed of x
        want = (c ** 2 * sigma ** 2 * a ** 2 + a ** 4) / (a ** 2 + sigma ** 2) ** 2
        assert float(s.mean()) == pytest.approx(want, rel=0.02)
    assert want > 1.4 * a ** 2 / (a ** 2 + sigma ** 2)  # wider images than the prior's score higher
    # seeded: the same seeds give the same score, others another draw
    assert torch.equal(denoiser_change(D, x[:2], [1, 2], sigma), denoiser_change(D, x[:2], [1, 2], sigma))
    assert not torch.equal(denoiser_change(D, x[:2], [1, 2], sigma), denoiser_change(D, x[:2], [3, 4], sigma))
    with pytest.raises(ValueError, match="complex"):
        denoiser_change(D, x.real, list(range(6)))


def test_reference_file_round_trip_and_refusals(tmp_path):
    ref = OODReference(median=0.6, slices=2, sigma=0.05, draws=4, accelerations=[4.0], mask="random", data="d",
                       checkpoint="c", prior_step=3, scores=[0.5, 0.7])
    p = ref.save(tmp_path / "p.ood.json")
    assert OODReference.load(p) == ref
    with pytest.raises(FileExistsError, match="overwrite"):
        ref.save(p)
    (tmp_path / "bad.json").write_text('{"median": 0}')
    with pytest.raises(ValueError, match="bad.json"):
        OODReference.load(tmp_path / "bad.json")
    assert sidecar(tmp_path / "prior.pt") == tmp_path / "prior.ood.json"
    assert find_reference(tmp_path / "none.pt") is None


def test_shipped_priors_have_references():
    for name in ("builtin", "builtin-colin27"):
        ref = find_reference(name)
        assert ref is not None and ref.slices >= 20 and ref.median > 0
