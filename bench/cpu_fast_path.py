"""CPU fast path: every way of running the encoder on this CPU, timed in one run against fp32 eager, each checked
for accuracy (embedding cosine similarity to fp32 on real H&E patches, and downstream per-gene Pearson).

Run: .venv/bin/python bench/cpu_fast_path.py [--quick]
Writes the table into BENCHMARKS.md (section ``cpu_fast_path``). ONNX Runtime rows need
``pip install onnx onnxscript onnxruntime`` (optional: they are reported as missing otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from embed_throughput import counted_flops, gemm_gflops
from spafoundation.io import read_dataset
from spafoundation.io.patches import extract_patches
from spafoundation.models import build_encoder
from spafoundation.models.encoder import quantize_int8

ROOT = Path(__file__).resolve().parent.parent
# (encoder name, overrides): the shipped default (ViT-Ti/16 at 112 px) and the paper's ViT-B/16 at 224 px.
MODELS = [("spafoundation-default", None), ("random-vitb16", None)]


def timed(fn, x: torch.Tensor, min_seconds: float) -> float:
    """img/s of ``fn`` on batch ``x`` after one warm-up call."""
    with torch.inference_mode():
        fn(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            fn(x)
            n += len(x)
        return n / (time.perf_counter() - t0)


def onnx_runner(encoder, size: int):
    """An ONNX Runtime session of the encoder's pooled forward, or the reason there is none."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    path = Path(tempfile.mkdtemp()) / "encoder.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (torch.rand(2, 3, size, size),), str(path), input_names=["x"],
                              output_names=["emb"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    except Exception as e:  # the exporter's dependencies vary between torch releases
        return None, f"export failed: {type(e).__name__}"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return (lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])), "ok"


def variants(name: str, overrides, size: int):
    """(label, callable on a preprocessed batch, note) for each fast-path candidate."""
    base = build_encoder(name, overrides=overrides)
    yield "fp32 eager (baseline)", base, ""
    try:
        compiled = torch.compile(build_encoder(name, overrides=overrides))
        compiled(torch.rand(2, 3, size, size))
        yield "fp32 torch.compile (inductor)", compiled, ""
    except Exception as e:
        yield "fp32 torch.compile (inductor)", None, f"failed: {type(e).__name__}"
    q = quantize_int8(build_encoder(name, overrides=overrides))
    yield "int8 dynamic (Linear layers)", q, ""
    run, note = onnx_runner(build_encoder(name, overrides=overrides), size)
    yield "fp32 ONNX Runtime", run, "" if run else note


def real_patches(data: str, encoder, n: int) -> torch.Tensor:
    """``n`` spot patches of C2-C6 at the encoder's geometry, preprocessed."""
    sections = read_dataset(data, ["C2", "C3", "C4", "C5", "C6"], with_images=False)
    per = -(-n // len(sections))
    rng = np.random.default_rng(0)
    parts = []
    for a in sections.values():
        xy = a.obsm["spatial"][rng.choice(a.n_obs, size=min(per, a.n_obs), replace=False)]
        parts.append(extract_patches(a, encoder.patch_um, encoder.input_size, xy=xy))
    return encoder.preprocess(np.concatenate(parts)[:n])


def downstream(data: str) -> list[tuple[str, float, float, float]]:
    """LOSO mean per-gene r (top-50 HVG, HEST targets) of default + ridge and of the default pipeline, fp32 vs
    int8 embeddings, in one benchmark run."""
    from spafoundation.eval.expression_benchmark import (
        Contender,
        pipeline_contender,
        run_expression_benchmark,
    )

    sections = read_dataset(data, ["C2", "C3", "C4", "C5", "C6"], with_images=False)
    encoders = {"fp32": build_encoder("spafoundation-default"),
                "int8": quantize_int8(build_encoder("spafoundation-default"))}
    contenders = []
    for tag in encoders:
        contenders += [Contender(f"default + ridge, {tag}", encoder=tag),
                       pipeline_contender(f"default pipeline, {tag}", tag)]
    rows, _ = run_expression_benchmark(sections, contenders, genes="hvg:50", target_sum=None, encoders=encoders)
    loso = rows[rows["split"] == "leave-one-section-out"]
    out = []
    for kind in ("default + ridge", "default pipeline"):
        f, q = (loso[loso["contender"] == f"{kind}, {t}"]["mean_r"].to_numpy() for t in ("fp32", "int8"))
        out.append((kind, float(f.mean()), float(q.mean()), float(np.abs(f - q).max())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-seconds", type=float, default=6.0)
    ap.add_argument("--quick", action="store_true", help="1 s per variant, no downstream check, no BENCHMARKS.md")
    args = ap.parse_args(argv)
    min_s = 1.0 if args.quick else args.min_seconds
    torch.manual_seed(0)
    t_start = time.time()
    peak = gemm_gflops()
    table = []
    for name, overrides in MODELS:
        ref_enc = build_encoder(name, overrides=overrides)
        size = ref_enc.input_size
        flops = counted_flops(ref_enc, size)
        x_real = real_patches(args.data, ref_enc, 64)
        with torch.inference_mode():
            ref = ref_enc(x_real)
        x = torch.rand(args.batch, 3, size, size)
        base_ips = None
        for label, fn, note in variants(name, overrides, size):
            if fn is None:
                table.append((name, size, label, None, None, None, note))
                print(f"{name} {label}: {note}", flush=True)
                continue
            ips = timed(fn, x, min_s)
            base_ips = base_ips or ips
            with torch.inference_mode():
                cos = torch.nn.functional.cosine_similarity(fn(x_real).float(), ref).min().item()
            table.append((name, size, label, ips, ips / base_ips, cos, note))
            print(f"{name} {size}px {label}: {ips:.1f} img/s ({ips / base_ips:.2f}x), {ips * flops / 1e9:.1f} "
                  f"GFLOP/s-equivalent, min cosine to fp32 {cos:.5f}", flush=True)
        # batch size and threads on the baseline
        for batch in (8, 128):
            ips = timed(ref_enc, torch.rand(batch, 3, size, size), min_s)
            table.append((name, size, f"fp32 eager, batch {batch}", ips, ips / base_ips, 1.0, ""))
            print(f"{name} batch {batch}: {ips:.1f} img/s ({ips / base_ips:.2f}x)", flush=True)
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
            ips = timed(ref_enc, x, min_s)
            torch.set_num_threads(threads)
            table.append((name, size, "fp32 eager, 1 thread", ips, ips / base_ips, 1.0, ""))
            print(f"{name} 1 thread: {ips:.1f} img/s ({ips / base_ips:.2f}x)", flush=True)

    down = [] if args.quick else downstream(args.data)
    for kind, f, q, worst in down:
        print(f"downstream {kind}: mean r fp32 {f:.4f}, int8 {q:.4f} (largest per-section difference {worst:.4f})")
    peak = max(peak, gemm_gflops())
    total = time.time() - t_start
    print(f"fp32 GEMM peak {peak:.1f} GFLOP/s; total {total:.0f} s")

    lines = [
        "## CPU fast path (torch.compile, ONNX Runtime, dynamic int8, threads, batch)",
        "",
        f"Encoder forward on this CPU ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads), batch {args.batch} unless stated, >= {min_s:g} s timed per row after a warm-up. Speed-up is "
        "against fp32 eager in the same run; cosine is the smallest cosine similarity between a variant's and "
        "fp32 eager's embeddings of 64 real H&E spot patches (C2-C6).",
        "",
        "| encoder | input | variant | img/s | speed-up | min cosine to fp32 | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, label, ips, ratio, cos, note in table:
        lines.append(f"| {name} | {size} px | {label} | {'' if ips is None else f'{ips:.1f}'} | "
                     f"{'' if ratio is None else f'**{ratio:.2f}x**'} | {'' if cos is None else f'{cos:.5f}'} | "
                     f"{note} |")
    if down:
        lines += ["", "Downstream check, same run: leave-one-section-out over C2-C6, top-50 HVG chosen on the "
                  "training sections, HEST targets (log1p counts), mean per-gene Pearson averaged over held-out "
                  "sections:", "", "| features | fp32 | int8 | largest per-section difference |", "|---|---|---|---|"]
        lines += [f"| {kind} | {f:.4f} | {q:.4f} | {worst:.4f} |" for kind, f, q, worst in down]
    lines += ["", f"fp32 GEMM peak in the same run: {peak:.1f} GFLOP/s. Total {total:.0f} s.", "",
              "Kept: dynamic int8 (the only variant well above 1x; compile and ONNX Runtime are within noise of "
              "eager here), the default on CPU of every command that builds an encoder (embed, embed --tiles, "
              "fit/predict, tumour, clusters, superres, run; utils/precision.py); `--precision fp32` opts out, and "
              "a fitted model rebuilds its encoder at the precision it was fitted with.", "",
              "Reproduce: `.venv/bin/python bench/cpu_fast_path.py`"]
    if not args.quick:
        update_section("cpu_fast_path", "\n".join(lines))
        print("updated BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
