"""GPU path: ViT-B/16 img/s at fp32, bf16 and fp16 autocast (eager and torch.compile), large batches, against the
GEMM throughput of the same GPU measured in the same run. Prints a notice and exits 0 where there is no GPU.

Run: .venv/bin/python bench/gpu_throughput.py [--batch 256]
Writes the table into BENCHMARKS.md (section ``gpu_throughput``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from embed_throughput import counted_flops
from spafoundation.models import build_encoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_tflops(dtype: torch.dtype, n: int = 8192, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
        if reps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def img_per_s(fn, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += len(x)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="random-vitb16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (the CPU paths are in bench/cpu_fast_path.py)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    flops = counted_flops(build_encoder(args.encoder), 224)
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        peak = gemm_tflops(DTYPES[precision])
        for compiled in (False, True):
            enc = build_encoder(args.encoder, device="cuda", overrides={"precision": precision})
            fn = torch.compile(enc) if compiled else enc
            x = torch.rand(args.batch, 3, enc.input_size, enc.input_size, device="cuda")
            ips = img_per_s(fn, x, args.seconds)
            tflops = ips * flops / 1e12
            rows.append((precision, "torch.compile" if compiled else "eager", ips, tflops, peak))
            print(f"{precision} {'compiled' if compiled else 'eager'}: {ips:.0f} img/s, {tflops:.1f} TFLOP/s = "
                  f"{100 * tflops / peak:.0f}% of the {precision} GEMM peak {peak:.1f} TFLOP/s", flush=True)
    name = torch.cuda.get_device_name()
    lines = [f"{args.encoder} forward at 224 px, batch {args.batch}, on {name} (torch {torch.__version__}); "
             "peak = the same GPU's n=8192 matmul in the same dtype, same run (fp32 with TF32 allowed).", "",
             "| precision | mode | img/s | TFLOP/s | GEMM peak TFLOP/s | % of peak |", "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {m} | {ips:.0f} | {t:.1f} | {pk:.1f} | **{100 * t / pk:.0f}%** |" for p, m, ips, t, pk in rows]
    lines += ["", "Reproduce: `.venv/bin/python bench/gpu_throughput.py`"]
    if not args.no_write:
        update_section("gpu_throughput", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
