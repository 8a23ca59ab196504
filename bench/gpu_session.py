"""One GPU session, measured in one run (issue 21): iBOT step rate and memory of ViT-Ti/16, ViT-S/16 and ViT-B/16, a
pre-training run of ViT-Ti/16 continuing from the shipped MAE encoder on every imaged section, sized to a time budget
from that rate, and ``embed --tiles`` on the H&E images (tiles/s against the encoder alone, with and without decoding
workers).

Run on the GPU machine (after bench/gpu_throughput.py):
    python bench/gpu_session.py --data DATA --out DIR --pretrain-seconds 240
It writes DIR/gpu_session.json, DIR/history.csv and the run's model folder (DIR/final). Then, where the package is
installed: .venv/bin/python bench/gpu_session.py --from-json DIR/gpu_session.json (tables into BENCHMARKS.md,
sections ``gpu_pretrain`` and ``gpu_embed_tiles``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section

ROOT = Path(__file__).resolve().parent.parent
GPU_RECIPE = "configs/pretrain/ibot_vitt16_gpu.yaml"
# (label, config, overrides) of the step-rate measurement: the GPU recipe, the same on ViT-S/16, and the paper's
# recipe at its scale.
STEP_RECIPES = [
    ("iBOT ViT-Ti/16 from the shipped encoder, 112 px, 2 global + 6 local crops, batch 256", GPU_RECIPE, []),
    ("iBOT ViT-S/16, 112 px, 2 global + 6 local crops, batch 256", GPU_RECIPE, ["model.encoder=random-vits16"]),
    ("iBOT ViT-B/16, 224 px, 2 global + 10 local crops, batch 128", "configs/pretrain/ibot_vitb16.yaml", []),
]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_rate(data: str, config: str, overrides: list[str], steps: int) -> dict:
    """Tiles per second of ``Pretrainer.train_step`` (every tile gives 2 global and n local views; forward,
    backward, AdamW, EMA teacher) after 3 warm-up steps, and the peak GPU memory, on a small preloaded bank."""
    from spafoundation.train.pretrain import Pretrainer, load_config

    cfg = load_config(ROOT / config, [*overrides, "data.n_tiles=512", "optim.steps=100000"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Pretrainer(cfg, data, out, progress=False)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for step in range(3):
            trainer.train_step(step)
        sync()
        t0 = time.perf_counter()
        for step in range(3, 3 + steps):
            trainer.train_step(step)
        sync()
        seconds = time.perf_counter() - t0
        batch = trainer.cfg["optim"]["batch_size"]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"tiles_per_s": steps * batch / seconds, "step_s": seconds / steps, "batch": batch,
            "peak_gib": peak}


def run_cli(args: list[str], log: Path) -> float:
    """Run ``spafoundation ARGS`` in a fresh process; its wall time in seconds (output appended to ``log``)."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ spafoundation {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "spafoundation", *args], stdout=f, stderr=subprocess.STDOUT,
                       check=True)
    return time.perf_counter() - t0


def embed_tiles(images: str, mpp: float, out: Path, log: Path, smoke: bool) -> list[dict]:
    """``embed --tiles`` over the H&E images: tiles/s with 0 and 8 decoding workers, fp32 and bf16."""
    import anndata as ad

    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for encoder, precision, workers in (("spafoundation-default", "bf16", 0), ("spafoundation-default", "bf16", 8),
                                        ("random-vitb16", "bf16", 8), ("random-vitb16", "fp32", 8)):
        if smoke and encoder == "random-vitb16":
            continue
        dest = out / f"tiles_{encoder}_{precision}_{workers}"
        seconds = run_cli(["embed", images, "--tiles", "--mpp", f"{mpp:g}", "--encoder", encoder, "--device", device,
                           "--precision", precision, "--batch-size", "256", "--workers", str(workers),
                           "--out", str(dest), "--quiet"], log)
        n = sum(ad.read_h5ad(p, backed="r").n_obs for p in dest.glob("*.h5ad"))
        rows.append({"encoder": encoder, "precision": precision, "workers": workers, "tiles": n,
                     "seconds": seconds, "tiles_per_s": n / seconds})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(dest)
    return rows


def measure(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_session.log"
    smoke = not torch.cuda.is_available()
    result = {"device": torch.cuda.get_device_name() if not smoke else "CPU (smoke run)", "torch": torch.__version__,
              "steps": []}
    for label, config, overrides in STEP_RECIPES:
        extra = ["optim.batch_size=4", "augment.n_local=2"] if smoke else []
        if smoke and "ViT-Ti" not in label:
            continue
        row = {"recipe": label, "config": config, **step_rate(args.data, config, overrides + extra,
                                                              2 if smoke else 10)}
        result["steps"].append(row)
        print(json.dumps(row), flush=True)
    # the pre-training run: as many steps of the GPU recipe as the budget allows at the measured rate
    rate = result["steps"][0]
    steps = max(2, int(args.pretrain_seconds / rate["step_s"]))
    run_dir = Path(tempfile.mkdtemp(prefix="pretrain_"))
    sets = [f"optim.steps={steps}", "checkpoint_every=100000", f"log_every={max(1, steps // 20)}",
            f"optim.warmup_steps={math.ceil(0.1 * steps)}"]
    if smoke:
        sets += ["optim.batch_size=4", "augment.n_local=2", "data.n_tiles=64"]
    seconds = run_cli(["pretrain", args.data, "--config", str(ROOT / GPU_RECIPE), "--out", str(run_dir),
                       "--name", "spafoundation-vitt16", *[f"--set={s}" for s in sets]], log)
    history = json.loads((run_dir / "history.json").read_text())
    out_dim = yaml.safe_load((run_dir / "config.yaml").read_text())["objective"]["params"]["out_dim"]
    result["pretrain"] = {"recipe": GPU_RECIPE, "set": sets, "steps": steps, "wall_s": seconds,
                          "train_tiles_per_s": history[-1]["img_per_s"], "loss_first": history[0]["loss"],
                          "loss_last": history[-1]["loss"], "peak_gib": None,
                          # DINO's term at ln(out_dim): the teacher's output is uniform, nothing was learned (how the
                          # CPU runs of ViT-Ti at batch 64 ended, MODEL_CARD.md of the shipped encoder)
                          "dino_first": history[0].get("dino"), "dino_last": history[-1].get("dino"),
                          "uniform_loss": math.log(out_dim)}
    shutil.copy(run_dir / "history.csv", out / "history.csv")
    shutil.copytree(run_dir / "final", out / "final", dirs_exist_ok=True)
    print(json.dumps(result["pretrain"]), flush=True)
    result["embed_tiles"] = embed_tiles(args.images or str(Path(args.data) / "ST-imgs" / "C"), args.mpp, out, log,
                                        smoke)
    (out / "gpu_session.json").write_text(json.dumps(result, indent=1))
    return result


def tables(result: dict) -> tuple[str, str]:
    dev = f"{result['device']} (torch {result['torch']})"
    pre = [f"Pre-training on {dev}: one `Pretrainer.train_step` (views cut on the GPU, bf16 autocast, forward, "
           "backward, AdamW, EMA teacher) timed over 10 steps after 3 warm-up steps, tiles already in memory.", "",
           "| recipe | tiles/s | s/step | peak GPU memory |", "|---|---|---|---|"]
    pre += [f"| {r['recipe']} (`{r['config']}`) | {r['tiles_per_s']:.0f} | {r['step_s']:.3f} | "
            f"{r['peak_gib']:.1f} GiB |" for r in result["steps"]]
    p = result["pretrain"]
    pre += ["", f"Then a run of `{p['recipe']}` sized to the time budget: {p['steps']} steps "
            f"({', '.join(p['set'])}), {p['wall_s']:.0f} s wall including the tile bank, "
            f"{p['train_tiles_per_s']:.0f} tiles/s in training, loss {p['loss_first']:.3f} -> {p['loss_last']:.3f}"
            + (f"; DINO term {p['dino_first']:.3f} -> {p['dino_last']:.3f} against ln(out_dim) = "
               f"{p['uniform_loss']:.3f}, the loss of a uniform teacher (at it: collapsed, nothing learned)."
               if p.get("dino_last") is not None else "."),
            "", "Reproduce: `python bench/gpu_session.py --data DATA --out DIR` on the GPU, then "
            "`.venv/bin/python bench/gpu_session.py --from-json DIR/gpu_session.json`"]
    emb = [f"`spafoundation embed IMAGES --tiles` on {dev}, over the five full-resolution HER2ST H&E JPEGs of "
           "patient C (0.69 um/px, every tissue tile of the encoder's field), batch 256, wall time of the command "
           "(start-up, JPEG decoding, tissue mask, embedding, writing).", "",
           "| encoder | precision | decoding workers | tiles | s | tiles/s |", "|---|---|---|---|---|---|"]
    emb += [f"| {r['encoder']} | {r['precision']} | {r['workers']} | {r['tiles']} | {r['seconds']:.1f} | "
            f"{r['tiles_per_s']:.0f} |" for r in result["embed_tiles"]]
    return "\n".join(pre), "\n".join(emb)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--images", help="folder of H&E images for embed --tiles (default DATA/ST-imgs/C)")
    ap.add_argument("--mpp", type=float, default=0.69, help="their pixel size")
    ap.add_argument("--out", default="gpu_session_out")
    ap.add_argument("--pretrain-seconds", type=float, default=240.0)
    ap.add_argument("--from-json", help="write BENCHMARKS.md from a session's gpu_session.json")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        pre, emb = tables(result)
        update_section("gpu_pretrain", pre)
        update_section("gpu_embed_tiles", emb)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        result = measure(args)
        pre, emb = tables(result)
    print(pre, emb, sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
