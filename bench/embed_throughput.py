"""Encoder throughput on this CPU: img/s, FLOPs per image and achieved GFLOP/s against a measured fp32 GEMM peak.

Run: .venv/bin/python bench/embed_throughput.py [--quick]
Writes the table into BENCHMARKS.md (section ``embed_throughput``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation.models import build_encoder

# (registered name, input px, um/px): the paper's 224 px and the CPU-friendly 112 px the registry uses for S/Ti.
CONFIGS = [
    ("random-vitt16", 112, 1.0),
    ("random-vits16", 112, 1.0),
    ("random-vitt16", 224, 0.5),
    ("random-vits16", 224, 0.5),
    ("random-vitb16", 224, 0.5),
]


def gemm_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """Best fp32 GEMM rate (GFLOP/s) of repeated n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def vit_flops(model, img: int) -> float:
    """Analytic forward FLOPs (2 x multiply-adds) of a timm ViT on one image: patch embedding, then per block
    qkv + proj (4 N D^2), attention scores and weighting (2 N^2 D) and the MLP (2 r N D^2)."""
    p = model.patch_embed.patch_size[0]
    d = model.embed_dim
    n_patch = (img // p) ** 2
    n = n_patch + model.num_prefix_tokens
    blk = model.blocks[0]
    hidden = blk.mlp.fc1.out_features
    per_block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * hidden
    return 2.0 * (n_patch * 3 * p * p * d + len(model.blocks) * per_block)


def counted_flops(encoder, img: int) -> float:
    x = torch.rand(1, 3, img, img)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(x)
    return float(counter.get_total_flops())


def throughput(encoder, img: int, batch: int, min_seconds: float) -> tuple[float, int]:
    x = torch.rand(batch, 3, img, img)
    with torch.inference_mode():
        encoder(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while True:
            encoder(x)
            n += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                return n / elapsed, n


# (label, config, overrides): the shipped default's MAE recipe and an iBOT recipe of the same ViT-Ti/16 at 112 px.
PRETRAIN = [
    ("MAE, ViT-Ti/16 112 px, batch 64 (configs/pretrain/tiny_cpu.yaml)", "configs/pretrain/tiny_cpu.yaml", []),
    ("iBOT, ViT-Ti/16 112 px, 2 global + 4 local crops, batch 32", "configs/pretrain/ibot_vitb16.yaml",
     ["model.encoder=random-vitt16", "model.overrides={input_size: 112, target_mpp: 1.0}", "augment.n_local=4",
      "optim.batch_size=32", "objective.params.out_dim=4096", "objective.params.patch_out_dim=4096"]),
]


def pretrain_rate(data: str, config: str, overrides: list[str], steps: int) -> float:
    """Training images per second of ``Pretrainer.train_step`` (forward, backward, optimiser, EMA) after one
    warm-up step, on a small preloaded tile bank so that reading is not timed."""
    import tempfile

    from spafoundation.train.pretrain import Pretrainer, load_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / config, [*overrides, "data.n_tiles=256", "optim.steps=100000"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Pretrainer(cfg, data, out, progress=False)
        trainer.train_step(0)
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            trainer.train_step(step)
        return steps * trainer.cfg["optim"]["batch_size"] / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-seconds", type=float, default=8.0, help="timed seconds per model (after warm-up)")
    ap.add_argument("--quick", action="store_true", help="1 s per model, no BENCHMARKS.md update")
    args = ap.parse_args(argv)
    min_s = 1.0 if args.quick else args.min_seconds
    torch.manual_seed(0)
    t_start = time.time()
    peak0 = gemm_gflops()
    rows = []
    for name, img, mpp in CONFIGS:
        enc = build_encoder(name, overrides={"input_size": img, "target_mpp": mpp})
        analytic = vit_flops(enc.model, img)
        counted = counted_flops(enc, img)
        ips, n = throughput(enc, img, args.batch, min_s)
        params = sum(p.numel() for p in enc.parameters()) / 1e6
        rows.append((name, img, mpp, params, counted, analytic, ips, n))
        print(f"{name:14s} {img:3d}px  {params:5.1f}M  {counted / 1e9:6.2f} GFLOP/img (analytic "
              f"{analytic / 1e9:.2f})  {ips:6.1f} img/s  {ips * counted / 1e9:6.1f} GFLOP/s", flush=True)
        del enc
    pre_rows = []
    data = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "her2st")
    for label, config, overrides in PRETRAIN:
        ips = pretrain_rate(data, config, overrides, steps=2 if args.quick else 8)
        pre_rows.append((label, ips))
        print(f"pre-training {label}: {ips:.1f} img/s", flush=True)
    peak = max(peak0, gemm_gflops())
    print(f"fp32 GEMM peak (2048^3 matmul, best of start/end): {peak:.1f} GFLOP/s; "
          f"total {time.time() - t_start:.0f} s")

    lines = [
        "## Encoder throughput on this CPU",
        "",
        "Encoder forward throughput on CPU, fp32, batch "
        f"{args.batch}, random weights (speed does not depend on them); one warm-up batch, then >= {min_s:g} s "
        "timed. FLOPs counted with torch.utils.flop_counter (matmuls and attention; the analytic ViT formula "
        "agrees within the column shown). Peak = best fp32 2048x2048 torch.matmul in the same run.",
        "",
        "| encoder | input | um/px | field | params | GFLOP/img | analytic | img/s | GFLOP/s | % of GEMM peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, img, mpp, params, counted, analytic, ips, _n in rows:
        lines.append(
            f"| {name.replace('random-', '')} | {img} px | {mpp:g} | {img * mpp:g} um | {params:.1f} M | "
            f"{counted / 1e9:.2f} | {analytic / 1e9:.2f} | {ips:.1f} | {ips * counted / 1e9:.1f} | "
            f"{100 * ips * counted / 1e9 / peak:.0f}% |"
        )
    lines += ["", "Pre-training step (forward + backward + AdamW + EMA teacher where there is one), fp32, timed over "
              "8 steps after a warm-up step, tiles already in memory:", "", "| recipe | img/s |", "|---|---|"]
    lines += [f"| {label} | {ips:.1f} |" for label, ips in pre_rows]
    lines += [
        "",
        f"fp32 GEMM peak: {peak:.1f} GFLOP/s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}). Other jobs may share this machine, "
        "so absolute numbers are lower bounds; the ratios to the peak measured in the same "
        "run are the comparable figure.",
        "",
        "Reproduce: `.venv/bin/python bench/embed_throughput.py`",
    ]
    if not args.quick:
        update_section("embed_throughput", "\n".join(lines))
        print("updated BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
