"""GPU inference: img/s of ViT-B/16 (224 px) and the shipped encoder at fp32, fp16/bf16 autocast and bf16 weights,
eager and compiled, with and without fused (flash) attention, over batch sizes, against the GEMM rate of the same GPU
measured in the same run; and how far bf16 moves the embeddings of real H&E patches from fp32.
Prints a notice and exits 0 where there is no GPU.

Run on the GPU machine: python bench/gpu_throughput.py --json gpu_throughput.json
Then anywhere: python bench/gpu_throughput.py --from-json gpu_throughput.json (writes the table into BENCHMARKS.md,
section ``gpu_throughput``). Without --json the table is written at once.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from embed_throughput import counted_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROOT = Path(__file__).resolve().parent.parent
DEVICE = "cuda"  # --smoke: "cpu", to check this script's code paths on a machine without a GPU


def sync() -> None:
    if DEVICE == "cuda":
        sync()


def gemm_tflops(dtype: torch.dtype, n: int = 8192, seconds: float = 2.0) -> float:
    n = n if DEVICE == "cuda" else 256
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
        if reps % 10 == 0:
            sync()
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def img_per_s(fn, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += len(x)
        sync()
        return n / (time.perf_counter() - t0)


def variants(encoder, compile_modes: tuple[str, ...]):
    """(precision, mode, forward, input dtype): the ways the encoder's forward can run on a GPU."""
    def autocast(dtype):
        def fn(x):
            with torch.autocast(DEVICE, dtype=dtype):
                return encoder.model.forward_features(x)[:, 0]
        return fn

    bf16 = copy.deepcopy(encoder.model).to(torch.bfloat16)
    unfused = copy.deepcopy(bf16)
    for blk in getattr(unfused, "blocks", []):
        blk.attn.fused_attn = False  # timm's explicit softmax(QK^T)V instead of scaled_dot_product_attention

    def weights(model):
        return lambda x: model.forward_features(x)[:, 0]

    out = [("fp32 (TF32)", "eager", weights(encoder.model), torch.float32),
           ("fp16 autocast", "eager", autocast(torch.float16), torch.float32),
           ("bf16 autocast", "eager", autocast(torch.bfloat16), torch.float32),
           ("bf16 weights", "eager, unfused attention", weights(unfused), torch.bfloat16),
           ("bf16 weights", "eager", weights(bf16), torch.bfloat16)]
    for mode in compile_modes:
        out.append(("bf16 weights", f"torch.compile {mode}", torch.compile(weights(bf16), mode=mode), torch.bfloat16))
    return out


def embedding_agreement(encoder, data: Path, n: int = 256) -> dict:
    """Cosine similarity of bf16 (autocast, weights) to fp32 embeddings of real spot patches (C2)."""
    from spafoundation.io import extract_patches, read_dataset

    adata = read_dataset(data, sections=["C2"])["C2"]
    patches = extract_patches(adata, encoder.patch_um, encoder.input_size)[:n]
    x = encoder.preprocess(patches)
    with torch.inference_mode():
        ref = encoder.model.forward_features(x)[:, 0].float()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ac = encoder.model.forward_features(x)[:, 0].float()
        w = copy.deepcopy(encoder.model).to(torch.bfloat16).forward_features(x.bfloat16())[:, 0].float()
    cos = torch.nn.functional.cosine_similarity
    return {"patches": len(patches), "bf16 autocast": float(cos(ac, ref).min()),
            "bf16 weights": float(cos(w, ref).min())}


def measure(args) -> dict:
    """Every row is saved to ``--json`` as soon as it is measured: a run stopped at its time limit keeps them."""
    from spafoundation.models import build_encoder

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run)",
              "torch": torch.__version__, "gemm_tflops": {p: gemm_tflops(d) for p, d in DTYPES.items()}, "rows": []}
    print(f"{result['device']}: GEMM TFLOP/s {result['gemm_tflops']}", flush=True)
    small = DEVICE == "cpu"
    for name, batch, compile_modes, sweep in (
            (args.encoder, args.batch, () if small else ("default",), (2, 8) if small else (64, 256, 1024)),
            ("spafoundation-default", 8 if small else 1024, () if small else ("reduce-overhead",), ())):
        enc = build_encoder(name, device=DEVICE)
        flops = counted_flops(build_encoder(name), enc.input_size)
        ways = variants(enc, compile_modes)
        bf16_eager = ways[4]  # the batch sweep runs the bf16-weights eager forward already built
        runs = [(p, m, fn, dt, batch) for p, m, fn, dt in ways]
        runs += [(*bf16_eager, b) for b in sweep if b != batch]
        for precision, mode, fn, dtype, b in runs:
            x = torch.rand(b, 3, enc.input_size, enc.input_size, device=DEVICE).to(dtype)
            row = {"encoder": name, "input_px": enc.input_size, "precision": precision, "mode": mode, "batch": b}
            t0 = time.perf_counter()
            try:
                ips = img_per_s(fn, x, args.seconds)
            except Exception as e:  # one variant failing (a compile mode, memory) must not cost the others
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            else:
                row.update(img_per_s=ips, tflops=ips * flops / 1e12, setup_s=time.perf_counter() - t0 - args.seconds)
            result["rows"].append(row)
            save()
            print(json.dumps(row), flush=True)
        if name == "spafoundation-default":
            result["agreement"] = embedding_agreement(enc, Path(args.data))
            save()
            print(json.dumps(result["agreement"]), flush=True)
    return result


def table(result: dict) -> str:
    peak = result["gemm_tflops"]
    lines = [f"On {result['device']} (torch {result['torch']}): inference img/s, input already on the GPU. "
             f"GEMM = the same GPU's 8192^3 matmul in the same run: bf16 {peak['bf16']:.0f}, fp16 {peak['fp16']:.0f}, "
             f"fp32 with TF32 {peak['fp32']:.0f} TFLOP/s. % = achieved TFLOP/s (counted FLOPs of the forward) over "
             "the GEMM rate of the row's dtype.", "",
             "| encoder | precision | mode | batch | img/s | TFLOP/s | % of GEMM |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['encoder']} ({r['input_px']} px) | {r['precision']} | {r['mode']} | {r['batch']} | "
                         f"failed: {r['error']} | | |")
            continue
        dtype = "fp32" if r["precision"].startswith("fp32") else r["precision"][:4]
        share = 100 * r["tflops"] / peak[dtype]
        lines.append(f"| {r['encoder']} ({r['input_px']} px) | {r['precision']} | {r['mode']} | {r['batch']} | "
                     f"{r['img_per_s']:.0f} | {r['tflops']:.1f} | {share:.0f}% |")
    if "agreement" in result:
        a = result["agreement"]
        lines += ["", f"bf16 against fp32 on {a['patches']} real C2 spot patches (spafoundation-default): lowest "
                  f"cosine similarity of the embeddings {a['bf16 autocast']:.4f} (autocast), "
                  f"{a['bf16 weights']:.4f} (bf16 weights)."]
    lines += ["", "Reproduce: `python bench/gpu_throughput.py --json gpu_throughput.json` on the GPU, then "
              "`.venv/bin/python bench/gpu_throughput.py --from-json gpu_throughput.json`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="random-vitb16")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--json", help="write the measurements here instead of BENCHMARKS.md")
    ap.add_argument("--from-json", help="write BENCHMARKS.md from measurements made earlier")
    ap.add_argument("--smoke", action="store_true", help="tiny run on the CPU: checks the code, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        global DEVICE
        DEVICE = "cpu"
        args.batch, args.seconds, args.encoder = 4, 0.05, "random-vitt16"
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    elif not torch.cuda.is_available() and not args.smoke:
        print("no CUDA GPU on this machine: nothing to measure (the CPU paths are in bench/cpu_fast_path.py)")
        return 0
    else:
        result = measure(args)
    if not args.json:
        update_section("gpu_throughput", table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
