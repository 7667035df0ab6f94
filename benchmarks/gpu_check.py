"""GPU check: one command that runs what a GPU run needs and measures it, in at most 8 minutes on one GPU.

Parts, each timed against its own budget; a part that fails (an error, a failed check, its budget spent) is
recorded with its error, the other parts still run, and the command exits 1 at the end:
  tests  the device-parametrised tests on the device (tests/test_gpu_check.py with MRIDIFF_TEST_DEVICES=<device>:
         operator adjoints, FFT/CG, ESPIRiT maps and coil compression, every sampler against CPU, each loss's
         training step, GSURE unbiasedness, the GSURE divergence under bf16 autocast), on CUDA also the suite's
         CUDA-only tests (test_physics, test_espirit); CI=true, and any skip is a failure. The bf16 divergence's
         relative error against an fp32 JVP goes into the table.
  train  training throughput (img/s per GPU) of dsm, gsure and ambient at 128^2, 256^2 and 320^2 (8 coils, net
         'small', bf16 autocast on CUDA as the training loop): the largest of a few batch sizes that fits
         (benchmarks/train_cost.py's synthetic batch and step timer).
  recon  posterior-sampling reconstruction s/slice as `mridiff recon` runs it (recon.pipeline.reconstruct_volume:
         ACS scale, coil compression to 8 virtual coils, ESPIRiT, built-in prior, sampler dds with its default
         schedule, 4 samples) on synthetic 8-coil 128^2 and 15-coil 320^2 volumes, slice by slice and with all
         slices of a volume in one batch, and the 10-call few-step recipe batched; share of time in the network
         (benchmarks/recon_speed.py's timer).
  ddp    torchrun with one process per GPU (nccl) against one plain process, same config and data: the same
         loss (step 1 always; every step when nproc is 1). With one GPU nproc is 1 and the training loop does
         not start a process group, so an NCCL all-reduce on one rank is checked on its own.
Peak memory (torch.cuda.max_memory_allocated) per measurement and per part. Prints a table and writes it as JSON
with the machine (GPU, torch, CUDA, cuDNN).

Usage: python benchmarks/gpu_check.py [--out runs/gpu_check.json] [--parts tests,train,recon,ddp]
       python benchmarks/gpu_check.py --cpu-smoke [--out FILE]    # tiny sizes on the CPU (tests/test_gpu_check.py)
Runs from a plain checkout (no install needed): the repository root goes on sys.path and PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "benchmarks"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from gsure_inverse import head_maps, phantom  # noqa: E402
from recon_speed import TimedDenoiser  # noqa: E402
from train_cost import synthetic_batch, time_step  # noqa: E402

PARTS = ("tests", "train", "recon", "ddp")


@dataclass(frozen=True)
class Plan:
    """Sizes of every part. ``FULL`` is the GPU check; ``SMOKE`` the CPU mode that keeps the script from rotting."""

    budgets: dict = field(default_factory=lambda: {"tests": 100, "train": 150, "recon": 90, "ddp": 90})
    preset: str = "small"
    losses: tuple = ("dsm", "gsure", "ambient")
    train_sizes: tuple = (128, 256, 320)
    train_coils: int = 8
    batch_pixels: tuple = (2**23, 2**22, 2**21)  # batch candidates: pixels // size^2 (512/256/128 at 128^2)
    train_repeats: int = 3
    recon_cases: tuple = ((8, 128), (15, 320))  # (coils, size)
    recon_slices: int = 8                      # slices per synthetic volume = the batched run's batch
    samples: int = 4
    recon_steps: int | None = None             # None: the sampler's default schedule (as `mridiff recon`)
    fast_steps: int = 10                       # the few-step recipe (BENCHMARKS.md, Few-step sampling), batched only
    warmup: bool = True                        # one untimed run before each timed recon run
    ddp_config: str = "gsure_r4"               # configs/train/<name>.yaml
    ddp_size: int = 128
    ddp_coils: int = 8
    ddp_volumes: int = 2
    ddp_slices: int = 8                        # per volume
    ddp_batch: int = 4                         # per process
    ddp_steps: int = 3
    nproc: int | None = None                   # None: the number of GPUs (CPU: 2 processes, gloo)


FULL = Plan()
SMOKE = Plan(budgets={"tests": 150, "train": 60, "recon": 60, "ddp": 120}, preset="tiny", train_sizes=(16, 32),
             train_coils=4, batch_pixels=(2 * 32 * 32,), train_repeats=1, recon_cases=((8, 64), (15, 64)),
             recon_slices=2, samples=2, recon_steps=3, fast_steps=2, warmup=False, ddp_config="tiny", ddp_size=48,
             ddp_coils=4, ddp_volumes=2, ddp_slices=3, ddp_batch=2, ddp_steps=2)


class CheckFailed(Exception):
    """A check of a part did not hold (the part's numbers are kept)."""


class OverBudget(Exception):
    """A part ran past its time budget."""


@dataclass
class Part:
    name: str
    budget: float
    device: torch.device
    rows: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def remaining(self) -> float:
        return max(1.0, self.budget - (time.perf_counter() - self.t0))

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def add(self, item: str, value: float, unit: str, **extra) -> dict:
        row = {"item": item, "value": float(value), "unit": unit, "peak_gib": self.peak_gib(), **extra}
        self.rows.append(row)
        return row


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise OverBudget in the main thread after ``seconds`` (SIGALRM; a running CUDA kernel finishes first)."""
    def handler(signum, frame):
        raise OverBudget(f"{what}: over its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cmd(cmd: list, env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group from the repository root; on a timeout or an interrupt the whole
    group (torchrun's workers too) is killed. Returns (exit status, stdout + stderr)."""
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return p.returncode, out


def child_env(**extra) -> dict:
    env = {**os.environ, **{k: str(v) for k, v in extra.items()}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free_memory(dev: torch.device):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def write_volume(path: Path, slices: int, coils: int, size: int, noise_std: float = 0.005, seed: int = 0) -> Path:
    """A fastMRI multi-coil file without sigpy: smooth birdcage-like maps x a phantom (benchmarks/gsure_inverse.py),
    fully sampled, CN noise ``noise_std`` (attr ``noise_std``: 40 dB against the phantom's ~0.5 foreground)."""
    import h5py

    from data_prep.ismrmrd import make_header
    from mri_diffusion.physics.coils import rss as rss_of
    from mri_diffusion.physics.fft import fft2c, ifft2c

    maps, supp = head_maps(coils, size, size)
    x = phantom(supp)
    g = torch.Generator().manual_seed(seed)
    k = fft2c(maps * x[:, None]).expand(slices, -1, -1, -1)
    k = k + noise_std / math.sqrt(2) * torch.complex(torch.randn(k.shape, generator=g),
                                                      torch.randn(k.shape, generator=g))
    rss = rss_of(ifft2c(k))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k.numpy())
        f.create_dataset("reconstruction_rss", data=rss.numpy())
        f.create_dataset("ismrmrd_header", data=make_header((size, size), (size, size), (220.0, 220.0), 3.0, coils))
        f.attrs.update({"max": float(rss.max()), "noise_std": noise_std, "acquisition": "AXT2",
                        "patient_id": "gpu_check"})
    return path


# ------------------------------------------------------------------------------------------------- tests

def divergence_bf16(device: torch.device) -> dict:
    """GSURE's directional derivative (``output_and_directional``, fd) under bf16 autocast against an fp32 JVP,
    and what a difference of two bf16 passes gives: {'fd': rel. error, 'naive': rel. error} (max over 4 sigmas).
    The same comparison as tests/test_gsure.py::test_divergence_survives_bf16_autocast, on any device."""
    from mri_diffusion.losses.common import crandn, sq_norm
    from mri_diffusion.losses.gsure import output_and_directional
    from mri_diffusion.nn import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("tiny").eval()
    with torch.no_grad():  # EDM zero-initialises the output layer: make it a trained-like net (drawn on the CPU)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = net.to(device)
    g = torch.Generator().manual_seed(0)
    u = crandn((4, 32, 32), g, "cpu", 0.5).to(device)
    v = crandn((4, 32, 32), g, "cpu", 0.05).to(device)
    sigma = torch.tensor([0.05, 0.1, 0.3, 1.0], device=device)
    with torch.no_grad():
        _, ref = torch.func.jvp(lambda w: net(w, sigma), (u,), (v,))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, jv = output_and_directional(net, u, sigma, v, "fd", 1e-3)
            h = net(u, sigma)
            delta = (1e-3 * sigma / v.abs().pow(2).mean(dim=(1, 2)).div(2).sqrt()).reshape(-1, 1, 1)
            naive = (net(u + delta * v, sigma) - h) / delta
    rel = lambda a: float((sq_norm(a - ref) / sq_norm(ref)).sqrt().max())  # noqa: E731
    return {"fd": rel(jv), "naive": rel(naive)}


def part_tests(plan: Plan, dev: torch.device, work: Path, part: Part):
    problems = []
    try:
        d = divergence_bf16(dev)
        part.add("gsure divergence, bf16 autocast (fd in fp32) vs fp32 JVP", d["fd"], "rel. err", limit=0.05)
        part.add("  the same as a difference of two bf16 passes", d["naive"], "rel. err")
        if not d["fd"] <= 0.05:
            problems.append(f"bf16 divergence relative error {d['fd']:.3g} > 0.05")
    except Exception as e:  # noqa: BLE001  (the tests below still run)
        problems.append(f"bf16 divergence: {type(e).__name__}: {e}")
    xml = work / "pytest.xml"
    targets, select = ["tests/test_gpu_check.py"], "on_device"  # the device tests are named *_on_device*
    if dev.type == "cuda":
        targets += ["tests/test_physics.py", "tests/test_espirit.py"]
        select += " or test_operators_run_on_cuda or test_cuda_matches_cpu"  # the suite's CUDA-only tests
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-k", select,
           f"--junitxml={xml}", *targets]
    rc, out = run_cmd(cmd, child_env(MRIDIFF_TEST_DEVICES=dev.type, CI="true"), part.remaining())
    part.info["pytest"] = {"command": " ".join(cmd[1:]), "exit_status": rc, "tail": out[-3000:]}
    if not xml.exists():
        raise CheckFailed("; ".join(problems + [f"pytest wrote no report (exit {rc}): {out[-1500:]}"]))
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    bad = [f"{c.get('classname')}::{c.get('name')}: {(c[0].get('message') or '')[:200]}"
           for s in suites for c in s.iter("testcase") if len(c) and c[0].tag in ("failure", "error", "skipped")]
    part.info["pytest"]["not_passed"] = bad
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    part.add(f"device tests on {dev.type}: passed", passed, "tests")
    part.add("  failed or errors", n["failures"] + n["errors"], "tests")
    part.add("  skipped (a failure here)", n["skipped"], "tests")
    if rc != 0 or passed == 0 or n["skipped"] or n["failures"] or n["errors"]:
        problems.append(f"pytest exit {rc}, {passed} passed; not passed: {'; '.join(bad) or out[-1500:]}")
    if problems:
        raise CheckFailed("; ".join(problems))


# ------------------------------------------------------------------------------------------------- train

def tiled(batch, B: int):
    """``batch`` repeated along the batch axis to B slices (cheap large batches from a few synthetic slices)."""
    def rep(t):
        return None if t is None else t.repeat(math.ceil(B / t.shape[0]), *([1] * (t.dim() - 1)))[:B].contiguous()

    return replace(batch, kspace=rep(batch.kspace), mask=rep(batch.mask), maps=rep(batch.maps),
                   density=rep(batch.density), noise_std=rep(batch.noise_std), target=rep(batch.target))


def part_train(plan: Plan, dev: torch.device, work: Path, part: Part):
    from mri_diffusion.config import LossOptions
    from mri_diffusion.nn import build_denoiser, count_parameters

    opts, amp = LossOptions(), dev.type == "cuda"
    part.info.update(preset=plan.preset, coils=plan.train_coils, amp_bf16=amp, repeats=plan.train_repeats,
                     parameters=count_parameters(build_denoiser(plan.preset)))
    failed = []
    for size in plan.train_sizes:
        cands = sorted({max(1, p // size**2) for p in plan.batch_pixels}, reverse=True)
        base = synthetic_batch(min(8, cands[0]), plan.train_coils, size, size, "cpu")
        for loss in plan.losses:
            oom = []
            for B in cands:
                net = batch = None
                try:
                    torch.manual_seed(0)
                    net = build_denoiser(plan.preset).to(dev)
                    batch = tiled(base, B).to(dev)
                    part.reset_peak()
                    t = time_step(loss, opts, net, batch, dev, plan.train_repeats, amp=amp)
                    part.add(f"train {loss} {size}^2, batch {B}", B / t, "img/s", loss=loss, size=size, batch=B,
                             s_per_step=t, oom_batches=oom)
                    break
                except torch.cuda.OutOfMemoryError:
                    oom.append(B)
                finally:
                    del net, batch
                    free_memory(dev)
            else:
                failed.append(f"{loss} {size}^2: out of memory at every batch {cands}")
    if failed:
        raise CheckFailed("; ".join(failed))


# ------------------------------------------------------------------------------------------------- recon

def part_recon(plan: Plan, dev: torch.device, work: Path, part: Part):
    from data_prep.fastmri_h5 import open_volume
    from recon.diffusion import DEFAULT_VIRTUAL_COILS, FEW_STEP, DiffusionRecon, load_prior
    from recon.pipeline import MaskSpec, reconstruct_volume

    net, cfg, _ = load_prior("builtin", dev)
    timed = TimedDenoiser(net, dev)
    rec = DiffusionRecon(timed, "dds", plan.recon_steps, plan.samples)
    fast = DiffusionRecon(timed, samples=plan.samples, **{**FEW_STEP, "steps": plan.fast_steps})
    part.info.update(prior=cfg.name, sampler="dds", calls_per_sample=rec.calls_per_sample, samples=plan.samples,
                     virtual_coils=DEFAULT_VIRTUAL_COILS, mask="random 4x", slices_per_volume=plan.recon_slices,
                     fast_calls_per_sample=fast.calls_per_sample)
    for coils, size in plan.recon_cases:
        vol = open_volume(write_volume(work / f"recon_{coils}c_{size}.h5", plan.recon_slices, coils, size))
        for bs, method, label in [(b, rec, "") for b in sorted({1, plan.recon_slices})] + [
                (plan.recon_slices, fast, f", few-step {fast.calls_per_sample} calls")]:
            def run(vol=vol, bs=bs, method=method):
                return reconstruct_volume(vol, method, MaskSpec(), dev, progress=False,
                                          virtual_coils=DEFAULT_VIRTUAL_COILS, batch_slices=bs)

            if plan.warmup:
                run()
            timed.seconds, timed.calls = 0.0, 0
            sync(dev)
            part.reset_peak()
            res = run()
            n = res["num_slices"]
            if not all(torch.isfinite(torch.as_tensor(res[k])).all() for k in ("reconstruction", "reconstruction_std")):
                raise CheckFailed(f"{coils} coils {size}^2: non-finite reconstruction")
            part.add(f"recon {coils} coils {size}^2, {plan.samples} samples, {bs} slice(s)/batch{label}",
                     res["seconds"] / n, "s/slice", coils=coils, size=size, batch_slices=bs, slices=n,
                     network_share=timed.seconds / res["seconds"], network_calls_per_slice=timed.calls / n * bs,
                     coil_energy_kept=res.get("coil_energy_kept"))
        free_memory(dev)


# --------------------------------------------------------------------------------------------------- ddp

def nccl_one_rank(dev: torch.device) -> float:
    """all_reduce over a process group of one rank (nccl on CUDA, gloo on CPU): the summed value (4.0)."""
    import torch.distributed as td

    td.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                          rank=0, world_size=1)
    try:
        t = torch.ones(4, device=dev)
        td.all_reduce(t)
        sync(dev)
        return float(t.sum())
    finally:
        td.destroy_process_group()


def logged_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def part_ddp(plan: Plan, dev: torch.device, work: Path, part: Part):
    from data_prep.prepare import PrepConfig, prepare
    from mri_diffusion.config import TrainConfig
    from mri_diffusion.train.loop import train

    nproc = plan.nproc or (torch.cuda.device_count() if dev.type == "cuda" else 2)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    src = work / "ddp_src"
    for v in range(plan.ddp_volumes):
        write_volume(src / f"vol_{v}.h5", plan.ddp_slices, plan.ddp_coils, plan.ddp_size, seed=v)
    data = work / "ddp_set"
    prepare([src], data, PrepConfig(acceleration=3.0, center_fraction=0.16), progress=False)
    d = TrainConfig.from_yaml(ROOT / "configs" / "train" / f"{plan.ddp_config}.yaml").to_dict()
    d["train"].update(steps=plan.ddp_steps, batch_size=plan.ddp_batch, log_every=1, ckpt_every=plan.ddp_steps)
    cfg = TrainConfig.from_dict(d)
    (work / "ddp.yaml").write_text(cfg.to_yaml())
    part.info.update(config=plan.ddp_config, loss=cfg.loss, nproc=nproc, backend=backend, process_group=nproc > 1,
                     steps=plan.ddp_steps, batch_per_process=plan.ddp_batch, amp_bf16=dev.type == "cuda")
    if nproc == 1:  # the loop starts no process group for one process: check the backend on its own
        part.add(f"{backend} all_reduce, one rank (expect 4)", nccl_one_rank(dev), "sum")
    part.reset_peak()
    single = train(cfg, data, work / "single", device=dev, progress=False, tensorboard=False)["losses"]
    part.add("one process: loss at step 1", single[0], "loss")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "mri_diffusion.cli", "train", "--config", work / "ddp.yaml", "--data", data, "--out", work / "ddp",
           "--quiet", "--device", dev.type]
    t = time.perf_counter()
    rc, out = run_cmd(cmd, child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")), part.remaining())
    part.info["torchrun"] = {"exit_status": rc, "seconds": time.perf_counter() - t, "tail": out[-3000:]}
    if rc != 0:
        raise CheckFailed(f"torchrun (nproc {nproc}, {backend}) exited {rc}: {out[-1500:]}")
    multi = logged_losses(work / "ddp")
    part.add(f"torchrun nproc {nproc} ({backend}): loss at step 1", multi[0], "loss")
    # step 1: same data, seeds and initial weights on rank 0 for any nproc; later steps only for nproc 1
    n = len(single) if nproc == 1 else 1
    if len(multi) != len(single) or not all(map(math.isfinite, single + multi)):
        raise CheckFailed(f"losses: one process {single}, torchrun {multi}")
    scale = sum(abs(v) for v in single) / len(single) or 1.0
    diff = max(abs(a - b) for a, b in zip(single[:n], multi[:n])) / scale
    tol = 1e-4 if dev.type == "cpu" else (2e-2 if n > 1 else 1e-3)
    part.add(f"max |loss difference| / mean |loss|, {n} step(s)", diff, "rel.", limit=tol, single=single,
             torchrun=multi)
    if diff > tol:
        raise CheckFailed(f"torchrun losses {multi[:n]} differ from one process {single[:n]} by {diff:.3g} > {tol}")


# ---------------------------------------------------------------------------------------------- the table

FUNCS = {"tests": part_tests, "train": part_train, "recon": part_recon, "ddp": part_ddp}


def machine_info(dev: torch.device) -> dict:
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "device": str(dev), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                 "capability": f"{p.major}.{p.minor}"})
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    return info


def run_part(name: str, fn, plan: Plan, dev: torch.device, work: Path, budget: float) -> dict:
    part = Part(name, budget, dev)
    part.reset_peak()
    error = None
    try:
        with time_limit(budget, name):
            fn(plan, dev, work, part)
    except Exception as e:  # noqa: BLE001  (recorded; the other parts still run)
        error = f"{type(e).__name__}: {e}"
        part.info["traceback"] = traceback.format_exc()[-4000:]
    finally:
        free_memory(dev)
    peaks = [r["peak_gib"] for r in part.rows if r["peak_gib"] is not None]
    return {"ok": error is None, "error": error, "seconds": time.perf_counter() - part.t0, "budget_s": budget,
            "peak_gib": max(peaks) if peaks else part.peak_gib(), "rows": part.rows, "info": part.info}


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def table(report: dict) -> str:
    m = report["machine"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in m["gpus"]) or "no GPU"
    head = (f"GPU check ({report['mode']}): {gpus}; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
            f"device {m['device']}, {m['cpu_count']} CPUs, commit {m.get('commit')}")
    lines = [head, f"{'part':<6} {'item':<58} {'value':>10} {'unit':<9} {'peak GiB':>8}"]
    for name, p in report["parts"].items():
        status = "ok" if p["ok"] else "FAILED"
        lines.append(f"{name:<6} [{status}, {p['seconds']:.1f} s of {p['budget_s']:.0f} s, "
                     f"peak {fmt(p['peak_gib'])} GiB]")
        for r in p["rows"]:
            lines.append(f"{'':<6} {r['item'][:58]:<58} {fmt(r['value']):>10} {r['unit']:<9} {fmt(r['peak_gib']):>8}")
        if p["error"]:
            lines.append(f"{'':<6} error: {p['error'][:600]}")
    lines.append(f"{'ALL OK' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])} "
                 f"in {report['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, a couple of steps each")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (full sizes: slow; see --parts)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--train-sizes", help="comma-separated image sizes, e.g. 128,256,320")
    ap.add_argument("--batch-pixels", help="comma-separated pixels per batch; batch candidates = pixels // size^2")
    ap.add_argument("--recon-cases", help="comma-separated COILSxSIZE, e.g. 8x128,15x320")
    ap.add_argument("--recon-slices", type=int)
    ap.add_argument("--nproc", type=int, help="torchrun processes (default: the number of GPUs; CPU: 2)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    a = ap.parse_args(argv)
    plan = SMOKE if a.cpu_smoke else FULL
    if a.train_sizes:
        plan = replace(plan, train_sizes=tuple(int(s) for s in a.train_sizes.split(",")))
    if a.batch_pixels:
        plan = replace(plan, batch_pixels=tuple(int(p) for p in a.batch_pixels.split(",")))
    if a.recon_cases:
        plan = replace(plan, recon_cases=tuple(tuple(int(v) for v in c.split("x")) for c in a.recon_cases.split(",")))
    if a.recon_slices:
        plan = replace(plan, recon_slices=a.recon_slices)
    if a.nproc:
        plan = replace(plan, nproc=a.nproc)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    dev = torch.device("cpu" if a.cpu_smoke else a.device)
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    report = {"mode": "cpu-smoke" if a.cpu_smoke else f"full on {dev.type}", "machine": machine_info(dev),
              "plan": {k: v for k, v in plan.__dict__.items()}, "parts": {}}
    if dev.type == "cuda" and not torch.cuda.is_available():
        report["parts"] = {n: {"ok": False, "error": "CUDA is not available (use --cpu-smoke on a CPU)",
                               "seconds": 0.0, "budget_s": 0.0, "peak_gib": None, "rows": [], "info": {}}
                           for n in parts}
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            for name in parts:
                work = Path(tmp) / name
                work.mkdir()
                print(f"[gpu_check] {name} ...", flush=True)
                budget = plan.budgets[name] * a.budget_scale
                report["parts"][name] = run_part(name, FUNCS[name], plan, dev, work, budget)
    report["failed"] = [n for n, p in report["parts"].items() if not p["ok"]]
    report["ok"] = not report["failed"]
    report["seconds"] = time.perf_counter() - t0
    print(table(report), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = a.out.with_name(a.out.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=1, default=str))
    tmp_out.replace(a.out)
    print(f"[gpu_check] wrote {a.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
