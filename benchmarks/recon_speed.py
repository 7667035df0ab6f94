"""Speed of posterior-sampling reconstruction: network calls, seconds per slice, time outside the network.

1. On test slices of the built-in data (8 coils, 128 x 128): the default recipe (sampler dds, its default
   schedule) vs a 500-call run of the same sampler: PSNR of both against reconstruction_rss (slice max as
   range), seconds per slice, and the share of time spent outside the network (FFTs, CG, data movement).
2. On a synthetic 15-coil 320 x 320 slice: the same timing split (no quality: the prior is fully convolutional).

Usage: python benchmarks/recon_speed.py --checkpoint CKPT --data runs/colin27/multicoil_test [--slices 3]
       [--samples 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import time

import h5py
import numpy as np
import torch

from data_prep.fastmri_h5 import list_h5, open_volume
from mri_diffusion.measurement import MeasurementModel
from mri_diffusion.physics.calib import estimate_maps
from mri_diffusion.physics.fft import fft2c
from mri_diffusion.physics.masks import RandomMask
from mri_diffusion.physics.normalize import acs_scale
from mri_diffusion.physics.views import centre_crop
from recon.diffusion import DiffusionRecon, load_prior


class TimedDenoiser(torch.nn.Module):
    def __init__(self, net, device):
        super().__init__()
        self.net, self.device, self.seconds, self.calls = net, device, 0.0, 0
        self.sigma_data = getattr(net, "sigma_data", 0.5)

    def forward(self, x, sigma):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = self.net(x, sigma)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def run(rec: DiffusionRecon, timed: TimedDenoiser, k, mask, maps, ctx, device):
    timed.seconds, timed.calls = 0.0, 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = rec(k, mask, maps, ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t
    return res, total, timed.seconds, timed.calls


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--long-steps", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only-15", action="store_true", help="skip the 8-coil part")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    dev = torch.device(a.device)
    net, cfg, ck = load_prior(a.checkpoint, dev)
    timed = TimedDenoiser(net, dev)
    short = DiffusionRecon(timed, "dds", None, a.samples)
    long = DiffusionRecon(timed, "dds", a.long_steps, a.samples)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}"
          + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else ""))
    print(f"prior {cfg.name} (step {ck['step']}); sampler dds, {a.samples} posterior samples per slice (batched)")
    rows = []
    vol = open_volume(list_h5(a.data)[0])
    mask = RandomMask(4.0).sample(vol.shape, 0).to(dev)
    with h5py.File(vol.path) as f:
        targets = f["reconstruction_rss"][: a.slices]
        ks = f["kspace"][: a.slices]
    for i in range(0 if a.only_15 else min(a.slices, vol.num_slices)):
        m = MeasurementModel().condition(torch.from_numpy(ks[i]).to(dev), mask, attrs=vol.attrs,
                                         where=f"{vol.path}: slice {i}")  # as mridiff recon conditions it
        ctx = {"file": vol.name, "slice": i, "noise_std": m.noise_std}
        out = {}
        for name, rec in (("default", short), ("long", long)):
            res, total, net_s, calls = run(rec, timed, m.kspace, m.mask, m.maps, ctx, dev)
            img = centre_crop((res.image.abs() * m.scale).cpu().numpy(), vol.recon_size)
            t = targets[i]
            out[name] = (10 * np.log10(t.max() ** 2 / np.mean((img - t) ** 2)), total, net_s, calls)
        rows.append(out)
    if rows:
        report_8(rows, vol, a)
    report_15(short, timed, targets[0], dev)


def report_8(rows, vol, a):
    d = np.array([[r["default"][0], r["long"][0]] for r in rows])
    tot = np.mean([r["default"][1] for r in rows])
    net_s = np.mean([r["default"][2] for r in rows])
    print(f"\n8 coils x {vol.shape[0]} x {vol.shape[1]}, R=4, {len(rows)} slices of {vol.name}")
    print(f"  default: {rows[0]['default'][3]} network calls/slice (each on the batch of {a.samples} samples), "
          f"{tot:.2f} s/slice, outside the network {100 * (1 - net_s / tot):.1f} %, PSNR {d[:, 0].mean():.2f} dB")
    print(f"  {a.long_steps}-level run: {rows[0]['long'][3]} calls/slice, "
          f"{np.mean([r['long'][1] for r in rows]):.2f} s/slice, PSNR {d[:, 1].mean():.2f} dB; "
          f"default - long = {d[:, 0].mean() - d[:, 1].mean():+.2f} dB")


def report_15(short, timed, target, dev):
    """15 coils x 320 x 320, synthetic (birdcage maps x a resampled test slice): all 15 coils vs SVD-compressed
    to 8 virtual coils, vs 8 virtual coils and 3 CG iterations per level; PSNR against the noise-free image."""
    import sigpy.mri

    from mri_diffusion.physics.compress import compress, compression_matrix
    from skimage.transform import resize

    img = resize(target / target.max(), (320, 320), preserve_range=True).astype(np.complex64)
    maps15 = torch.from_numpy(sigpy.mri.birdcage_maps((15, 320, 320), r=1.1).astype(np.complex64)).to(dev)
    k15 = fft2c(maps15 * torch.from_numpy(img).to(dev)[None])
    m15 = RandomMask(4.0).sample((320, 320), 0).to(dev)
    k15 = k15 * m15
    s15 = acs_scale(k15, m15)
    k15 = k15 / s15
    ctx = {"file": "synthetic", "slice": 0, "noise_std": 0.0}
    truth = np.abs(img) / s15
    U, kept = compression_matrix(k15, m15, 8)
    k8 = compress(k15, U)
    print("\n15 coils x 320 x 320, R=4 (synthetic, noise-free; PSNR against the true magnitude):")
    for label, kk, iters, ref in (("15 coils, 5 CG it.", k15, 5, None),
                                  (f"8 virtual coils ({100 * kept:.2f} % energy), 5 CG it.", k8, 5, U[0]),
                                  ("8 virtual coils, 3 CG it.", k8, 3, U[0])):
        t0 = time.perf_counter()
        maps_e = estimate_maps(kk, m15, phase_ref=ref)
        t_maps = time.perf_counter() - t0
        short.options = {"cg_iters": iters}
        res, total, net_s, calls = run(short, timed, kk, m15, maps_e, ctx, dev)
        rec = res.image.abs().cpu().numpy()
        psnr = 10 * np.log10(truth.max() ** 2 / np.mean((rec - truth) ** 2))
        print(f"  {label:<44} {calls} calls/slice, sampler {total:.2f} s/slice (+ ESPIRiT {t_maps:.2f} s), "
              f"outside the network {100 * (1 - net_s / total):.1f} %, PSNR {psnr:.2f} dB")
    short.options = {}


if __name__ == "__main__":
    main()
