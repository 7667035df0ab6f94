"""Operators against closed-form truth: fastmri's FFT, adjoint identities, isometries, CG solutions."""

import numpy as np
import pytest
import torch

from mri_diffusion.physics import (CoilMaps, FFT2c, LowResView, Projection, Sense, adjoint_error,
                                   conjugate_gradient, fft2c, ifft2c, pinv)
from mri_diffusion.physics.complex import from_channels, to_channels
from mri_diffusion.physics.linop import FunctionOp, Identity
from mri_diffusion.physics.sense import CartesianMask, Multiply

from .conftest import fft2c_np


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))


def random_sense(B=2, C=4, H=20, W=17, seed=0, two_d=False):
    g = torch.Generator().manual_seed(seed + 100)
    maps = crandn(B, C, H, W, seed=seed)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
    shape = (B, 1, H, W) if two_d else (B, 1, 1, W)
    mask = (torch.rand(shape, generator=g) < 0.4).float()
    return maps, mask


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (64, 37)])
def test_fft2c_matches_fastmri_and_numpy(shape):
    import fastmri

    x = crandn(3, *shape)
    ours = fft2c(x)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x).contiguous()).contiguous())
    assert torch.allclose(ours, ref, atol=1e-5)
    assert np.allclose(ours.numpy(), fft2c_np(x.numpy()), atol=1e-5)
    assert torch.allclose(ifft2c(ours), x, atol=1e-5)
    assert torch.allclose(torch.linalg.vector_norm(ours), torch.linalg.vector_norm(x), rtol=1e-5)


def test_fft_rejects_real_input():
    with pytest.raises(TypeError, match="complex"):
        fft2c(torch.zeros(4, 4))


@pytest.mark.parametrize("two_d", [False, True])
def test_adjoints_of_every_operator(two_d):
    maps, mask = random_sense(two_d=two_d)
    B, C, H, W = maps.shape
    x, y = crandn(B, H, W, seed=1), crandn(B, C, H, W, seed=2)
    ops = {
        "fft": (FFT2c(), x, crandn(B, H, W, seed=3)),
        "maps": (CoilMaps(maps), x, y),
        "mask": (CartesianMask(mask), y, crandn(B, C, H, W, seed=4)),
        "multiply": (Multiply(crandn(1, H, W, seed=5)), x, crandn(B, H, W, seed=6)),
        "sense": (Sense(maps, mask), x, y),
        "sense.H": (Sense(maps, mask).H, y, x),
        "normal": (Sense(maps, mask).N, x, crandn(B, H, W, seed=7)),
        "sum": (FFT2c() + 2.0 * Identity(), x, crandn(B, H, W, seed=8)),
        "lowres": (LowResView((H, W), (10, 9)), x, crandn(B, 10, 9, seed=9)),
    }
    for name, (op, a, b) in ops.items():
        assert adjoint_error(op, a, b) < 1e-5, name


def test_projection_is_self_adjoint():
    """P = A^+ A by CG is linear only up to CG convergence: exact in complex128, ~1e-5 in complex64."""
    maps, mask = random_sense()
    x, y = crandn(2, 20, 17, seed=1), crandn(2, 20, 17, seed=2)
    P64 = Projection(Sense(maps.to(torch.complex128), mask.double()), max_iter=500, tol=1e-14)
    assert adjoint_error(P64, x.to(torch.complex128), y.to(torch.complex128)) < 1e-10
    assert adjoint_error(Projection(Sense(maps, mask), max_iter=500, tol=1e-7), x, y) < 1e-5


@pytest.mark.parametrize("two_d", [False, True])
def test_sense_normal_equals_adjoint_of_forward(two_d):
    maps, mask = random_sense(two_d=two_d)
    A = Sense(maps, mask)
    x = crandn(2, 20, 17, seed=11)
    assert torch.allclose(A.normal(x), A.adjoint(A(x)), atol=1e-5)


def test_adjoint_check_can_fail():
    wrong = FunctionOp(fft2c, fft2c)  # adjoint should be ifft2c
    x = crandn(2, 9, 7)
    assert adjoint_error(wrong, x, crandn(2, 9, 7, seed=1)) > 1e-2


def test_single_coil_sense_is_masked_fft():
    _, mask = random_sense(C=1)
    x = crandn(2, 20, 17)
    A = Sense(None, mask, image_shape=(20, 17))
    assert torch.allclose(A(x)[:, 0], mask[:, 0] * fft2c(x), atol=1e-6)


def test_lowres_view_is_partial_isometry_with_sqrt_scale():
    V = LowResView((64, 48), (32, 24))
    y = crandn(3, 32, 24)
    assert torch.allclose(V(V.H(y)), y, atol=1e-5)  # V V^H = I
    # noise stays white at the same level: V maps sigma * n to sigma * n'
    n = crandn(2000, 64, 48, seed=3) / np.sqrt(2)
    vn = V(n)
    assert abs(float((vn.abs() ** 2).mean()) - 1.0) < 0.01
    # a constant image grows by sqrt(N/M): same energy on fewer pixels
    ones = torch.ones(1, 64, 48, dtype=torch.complex64)
    assert abs(float(V(ones).abs().mean()) - V.amplitude_scale) < 1e-5
    assert abs(V.amplitude_scale - 2.0) < 1e-9


def test_cg_solves_a_batched_spd_system():
    maps, mask = random_sense(seed=3)
    A = Sense(maps, mask)
    lam = 0.1
    xtrue = crandn(2, 20, 17, seed=4)
    b = A.normal(xtrue) + lam * xtrue
    x = conjugate_gradient(lambda v: A.normal(v) + lam * v, b, max_iter=200, tol=1e-8)
    assert torch.allclose(x, xtrue, atol=1e-3)


def test_pinv_and_projection_against_dense_svd():
    maps, mask = random_sense(B=1, C=2, H=8, W=6, seed=5)
    A = Sense(maps, mask)
    n = 8 * 6
    basis = torch.eye(n, dtype=torch.complex64).reshape(n, 8, 6)
    Amat = torch.stack([A(basis[i:i + 1]).reshape(-1) for i in range(n)], dim=1).to(torch.complex128)
    y = A(crandn(1, 8, 6, seed=6)) + 0.1 * crandn(1, 2, 8, 6, seed=7) * mask
    x_ref = torch.linalg.pinv(Amat) @ y.reshape(-1).to(torch.complex128)
    x = pinv(A, y, max_iter=200, tol=1e-10)
    assert torch.allclose(x.reshape(-1).to(torch.complex128), x_ref, atol=1e-4)
    P_ref = torch.linalg.pinv(Amat) @ Amat
    v = crandn(1, 8, 6, seed=8)
    Pv = Projection(A, max_iter=200, tol=1e-10)(v)
    assert torch.allclose(Pv.reshape(-1).to(torch.complex128), P_ref @ v.reshape(-1).to(torch.complex128), atol=1e-4)
    assert torch.allclose(Projection(A, max_iter=200, tol=1e-10)(Pv), Pv, atol=1e-4)  # idempotent


def test_complex_channel_round_trip():
    x = crandn(2, 5, 6)
    c = to_channels(x)
    assert c.shape == (2, 2, 5, 6) and c.dtype == torch.float32
    assert torch.equal(from_channels(c), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_operators_run_on_cuda():
    maps, mask = random_sense()
    A = Sense(maps.cuda(), mask.cuda())
    x = crandn(2, 20, 17).cuda()
    assert A(x).is_cuda and pinv(A, A(x), max_iter=5).is_cuda


def test_sense_normal_promotes_like_the_generic_path():
    """A complex128 image through complex64 maps: Sense.normal returns complex128, equal to A^H(A x)."""
    maps, mask = random_sense()
    A = Sense(maps, mask)
    x = crandn(2, 20, 17, seed=3).to(torch.complex128)
    out = A.normal(x)
    assert out.dtype == torch.complex128 and torch.allclose(out, A.adjoint(A(x)), atol=1e-5)
