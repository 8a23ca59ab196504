"""``spafoundation embed DATA --encoder NAME``: one embedding per spot of every imaged section, into an h5ad."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path
from spafoundation.io.readers import read_dataset
from spafoundation.utils.atomic import write_h5ad

log = logging.getLogger(__name__)


def _default_out(encoder_name: str) -> Path:
    return Path(f"embeddings_{encoder_name}.h5ad")


def run(args) -> int:
    from spafoundation.models.embed import UNS_KEY, embed_adata
    from spafoundation.models.registry import build_encoder

    if args.batch_size < 1:
        raise InputError(None, "--batch-size", "must be >= 1")
    sections = [s for s in args.sections.split(",") if s] if args.sections else None
    data = read_dataset(args.data, sections)
    imaged = {name: a for name, a in data.items() if image_path(a)}
    skipped = sorted(set(data) - set(imaged))
    if not imaged:
        raise InputError(args.data, "image", "no section has an H&E image to embed")
    if skipped:
        print(f"skipping {len(skipped)} section(s) without an image: {', '.join(skipped)}")
    encoder = build_encoder(args.encoder, weights=args.weights, device=args.device)
    print(f"encoder {encoder.name}: {encoder.embed_dim}-d, {encoder.input_size} px patches of "
          f"{encoder.patch_um:g} um, tta={'on' if args.tta else 'off'}")
    key = f"X_{encoder.name}"
    cache_dir = False if args.no_cache else args.cache_dir
    for name, adata in imaged.items():
        embed_adata(adata, encoder, cache_dir=cache_dir, tta=args.tta, batch_size=args.batch_size,
                    progress=not args.quiet, key=key)
        rec = adata.uns[UNS_KEY][key]
        low = int(adata.obs["low_tissue"].sum())
        print(f"{name}: {adata.n_obs} spots, cache {rec['cache']} ({rec['n_from_cache']} from cache), "
              f"{low} spot(s) with little tissue")
    out = Path(args.out) if args.out else _default_out(encoder.name)
    if len(imaged) == 1:
        merged = next(iter(imaged.values()))
    else:
        merged = ad.concat(list(imaged.values()), join="outer", merge="same", uns_merge="unique")
    write_h5ad(merged, out)
    print(f"wrote {out}: {merged.n_obs} spots, obsm['{key}'] {merged.obsm[key].shape}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed every spot's H&E patch with an encoder, into obsm['X_<name>']")
    p.add_argument("data", help="dataset folder (legacy ST, Space Ranger outs/, HEST), manifest or .h5ad")
    p.add_argument("--encoder", required=True,
                   help="spafoundation-vitb16, random-vits16, timm:<arch>, hf-hub:<repo> or a model folder")
    p.add_argument("--weights", help="checkpoint file for the encoder (e.g. spafoundation_1m_vitb16.pth)")
    p.add_argument("--sections", help="comma-separated subset of sections")
    p.add_argument("--out", help="output .h5ad (default: embeddings_<encoder>.h5ad)")
    p.add_argument("--cache-dir", help="embedding cache (default $SPAFOUNDATION_CACHE or ~/.cache/spafoundation)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations/flips of each patch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
