"""``spafoundation embed SLIDES --tiles``: whole-slide tile embeddings for a cohort, one h5ad per slide.

Under ``torchrun --nproc_per_node N`` the slides are dealt round-robin to the N processes (one GPU each where
there are GPUs). Every slide is written atomically with a JSON record beside it, so a run that crashed restarts
where it stopped: slides whose record matches the encoder, tile geometry and tissue mask version are skipped. When all processes are
done, rank 0 writes ``index.csv`` (one row per slide). A slide that fails is reported there and the run goes on;
the exit code is then 2."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.patches import TISSUE_MASK_VERSION
from spafoundation.io.slide_list import list_slides
from spafoundation.utils.atomic import atomic_path, write_h5ad
from spafoundation.utils.distributed import barrier, current_world, device_for, shard

log = logging.getLogger(__name__)


def _record_path(out: Path, slide_id: str) -> Path:
    return out / f"{slide_id}.json"


def _done(out: Path, slide_id: str, want: dict) -> bool:
    rec = _record_path(out, slide_id)
    if not (rec.exists() and (out / f"{slide_id}.h5ad").exists()):
        return False
    try:
        have = json.loads(rec.read_text())
    except (OSError, ValueError):
        return False
    return have.get("status") == "ok" and all(have.get(k) == v for k, v in want.items())


def _write_record(out: Path, slide_id: str, record: dict) -> None:
    with atomic_path(_record_path(out, slide_id)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def run(args) -> int:
    from spafoundation.models.slide_embed import embed_slide
    from spafoundation.tasks.expression import resolve_encoder

    for flag, value in (("--sections", args.sections), ("--tta", args.tta), ("--no-cache", args.no_cache),
                        ("--cache-dir", args.cache_dir)):
        if value:
            raise InputError(None, flag, "applies to spot embeddings, not to --tiles")
    world = current_world()
    slides = list_slides(args.data, mpp=args.mpp)
    device = device_for(world, args.device)
    encoder = resolve_encoder(args.encoder, device=device, weights=args.weights)  # int8 on CPU: utils/precision.py
    out = Path(args.out) if args.out else Path(f"tiles_{encoder.name}")
    out.mkdir(parents=True, exist_ok=True)
    want = {"encoder": encoder.identity, "tile_um": float(encoder.patch_um), "input_size": encoder.input_size,
            "min_tissue": float(args.min_tissue), "tissue_mask_version": TISSUE_MASK_VERSION}
    mine = shard(slides, world)
    if world.is_main:
        print(f"{len(slides)} slide(s), {world.size} process(es); encoder {encoder.name} ({encoder.precision}): "
              f"tiles of {encoder.patch_um:g} um at {encoder.input_size} px, min tissue {args.min_tissue:.0%}")
    failed = 0
    for entry in mine:
        if _done(out, entry.slide_id, want):
            print(f"[rank {world.rank}] {entry.slide_id}: already done, skipped")
            continue
        t0 = time.perf_counter()
        try:
            adata = embed_slide(entry.path, encoder, mpp=entry.mpp, slide_id=entry.slide_id,
                                min_tissue=args.min_tissue, batch_size=args.batch_size,
                                num_workers=args.workers, progress=not args.quiet)
        except InputError as e:
            failed += 1
            print(f"[rank {world.rank}] {entry.slide_id}: FAILED: {e}")
            _write_record(out, entry.slide_id, {**want, "slide_id": entry.slide_id, "path": str(entry.path),
                                                "status": "failed", "error": str(e)})
            continue
        write_h5ad(adata, out / f"{entry.slide_id}.h5ad")
        seconds = time.perf_counter() - t0
        _write_record(out, entry.slide_id, {**want, "slide_id": entry.slide_id, "path": str(entry.path),
                                            "status": "ok", "n_tiles": adata.n_obs, "seconds": round(seconds, 2)})
        print(f"[rank {world.rank}] {entry.slide_id}: {adata.n_obs} tiles in {seconds:.1f} s "
              f"({adata.n_obs / max(seconds, 1e-9):.1f} tiles/s)")
    barrier(world)
    if world.is_main:
        rows = []
        for entry in slides:
            rec = _record_path(out, entry.slide_id)
            rows.append(json.loads(rec.read_text()) if rec.exists() else
                        {"slide_id": entry.slide_id, "path": str(entry.path), "status": "missing"})
        index = pd.DataFrame(rows)
        with atomic_path(out / "index.csv") as tmp:
            index.to_csv(tmp, index=False)
        bad = index[index["status"] != "ok"]
        print(f"wrote {out}/: {len(index) - len(bad)} slide(s) embedded, {len(bad)} failed; index.csv lists them")
        failed = len(bad)
    return 2 if failed else 0
