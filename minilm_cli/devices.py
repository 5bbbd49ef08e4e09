"""Which device and precision a run uses, and how many cores it may take."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def choose_device(requested: str = "auto") -> torch.device:
    """auto: CUDA, then MPS, then CPU. Anything else must exist here."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise InputError(f"unknown --device {requested}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda asked, but no CUDA device is visible here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {requested}: only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps asked, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported --device {requested}")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read: macOS, a sandbox)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: where bf16 matmuls run natively and beat fp32 (measured ~2-3x)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def choose_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 (or fp16) on CUDA, fp16 on MPS, bf16 on a CPU with native bf16, else fp32."""
    if requested not in PRECISIONS:
        raise InputError(f"unknown --precision {requested}: use {', '.join(PRECISIONS)}")
    if requested == "int8" and device.type != "cpu":
        raise InputError(f"--precision int8 runs on a CPU only, not {device.type}: use fp16 or bf16 there")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# Why auto chose what it did on a CPU, per feature profile, from bench/throughput.py (issue 22):
# AMX: bf16 ~3x fp32, int8 0.75x bf16; avx512_bf16 + VNNI without AMX (2-core AMD EPYC, fp32 on
# oneDNN's packed matmul since 2026-12-07): bf16 1.47x (mixed) / 1.48x (long) fp32, int8 1.12x /
# 1.01x bf16 in memory (slower end to end: it calibrates at load); AVX2: emulated bf16 slower.
CPU_REASONS = {
    "amx": "AMX: bf16 runs natively (~3x fp32); int8 is slower than bf16 there (0.75x)",
    "avx512_bf16": "avx512_bf16 without AMX: bf16 measured 1.5x fp32; int8 (VNNI) measured "
    "1.0-1.1x bf16, opt-in (min cosine ~0.99 against fp32, bf16 0.9999)",
    "plain": "no native bf16 (avx512_bf16 or AMX): fp32; bf16 would be emulated, slower",
}


def precision_reason(requested: str, device: torch.device) -> str:
    """One line for `minilm info`: why this precision (auto never picks a slower one silently)."""
    if requested != "auto":
        return f"asked for (--precision {requested})"
    if device.type != "cpu":
        return f"auto on {device.type}: the fastest supported half precision"
    flags = cpu_flags()
    profile = "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "plain"
    reason = CPU_REASONS[profile]
    if profile == "plain" and {"avx512_vnni", "avx_vnni"} & flags:
        reason += "; int8 (VNNI) is opt-in: --precision int8"
    return f"auto: {reason}"


def usable_cpus() -> int:
    """Cores this process may use: the affinity mask (taskset) and the cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
