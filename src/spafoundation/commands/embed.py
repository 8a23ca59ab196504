"""``spafoundation embed DATA --encoder NAME``: one embedding per spot of every imaged section, into an h5ad."""

from __future__ import annotations

import logging
from pathlib import Path

from spafoundation.commands._common import (
    add_data_options,
    add_precision_option,
    add_stain_option,
    data_options,
    imaged_sections,
    non_negative_int,
    parse_sections,
    positive_int,
    stain_reference,
    unit_interval,
)
from spafoundation.errors import InputError
from spafoundation.utils.atomic import check_output_file, write_h5ad

log = logging.getLogger(__name__)


def _default_out(encoder_name: str) -> Path:
    return Path(f"embeddings_{encoder_name}.h5ad")


def run(args) -> int:
    if args.tiles:
        from spafoundation.commands._embed_tiles import run as run_tiles

        if args.stain_norm != "none":
            raise InputError(None, "--stain-norm", "is not applied to --tiles yet (whole-slide tiles have no spot "
                             "sample to estimate a slide's stain from); embed spots, or leave it at none")
        return run_tiles(args)
    import anndata as ad

    from spafoundation.io.readers import read_dataset
    from spafoundation.models.embed import UNS_KEY, embed_adata
    from spafoundation.tasks.expression import resolve_encoder
    from spafoundation.utils.distributed import barrier, current_world, device_for, shard

    if args.out:
        check_output_file(args.out, ".h5ad")
    sections = parse_sections(args.sections)
    imaged = imaged_sections(read_dataset(args.data, sections, imaged_only=True, **data_options(args)), args.data,
                             "to embed")
    world = current_world()
    if world.size > 1 and args.no_cache:
        raise InputError(None, "--no-cache", "under torchrun the ranks hand their sections over through the cache")
    stain = stain_reference(args)  # before the encoder is built: a bad reference image fails fast
    encoder = resolve_encoder(args.encoder, device=device_for(world, args.device), weights=args.weights)
    print(f"encoder {encoder.name}: {encoder.embed_dim}-d, {encoder.input_size} px patches of "
          f"{encoder.patch_um:g} um, tta={'on' if args.tta else 'off'}, stain normalisation "
          f"{'none' if stain is None else f'{stain.method} to {stain.source}'}")
    key = f"X_{encoder.name}"
    cache_dir = False if args.no_cache else args.cache_dir
    if world.size > 1:
        # Each rank embeds its share of the sections into the cache; rank 0 then gathers them as cache hits.
        for name in shard(list(imaged), world):
            embed_adata(imaged[name].copy(), encoder, cache_dir=cache_dir, tta=args.tta,
                        batch_size=args.batch_size, progress=not args.quiet, key=key, stain=stain)
            print(f"[rank {world.rank}] {name}: embedded")
        barrier(world)
        if not world.is_main:
            return 0
    for name, adata in imaged.items():
        embed_adata(adata, encoder, cache_dir=cache_dir, tta=args.tta, batch_size=args.batch_size,
                    progress=not args.quiet, key=key, stain=stain)
        rec = adata.uns[UNS_KEY][key]
        low = int(adata.obs["low_tissue"].sum())
        print(f"{name}: {adata.n_obs} spots, cache {rec['cache']} ({rec['n_from_cache']} from cache), "
              f"{low} spot(s) with little tissue")
    out = Path(args.out) if args.out else _default_out(encoder.name)
    if not args.out:  # the default name in the current folder follows the output rule as --out does (cli.main)
        from spafoundation.utils.outputs import check_output_not_input, input_paths

        check_output_not_input(out, input_paths(args))
    if len(imaged) == 1:
        merged = next(iter(imaged.values()))
    else:
        merged = ad.concat(list(imaged.values()), join="outer", merge="same", uns_merge="unique")
    write_h5ad(merged, out)
    print(f"wrote {out}: {merged.n_obs} spots, obsm['{key}'] {merged.obsm[key].shape}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed every spot's H&E patch (or, with --tiles, every tissue tile of whole slides)")
    p.add_argument("data", help="dataset folder (legacy ST, Space Ranger outs/, HEST), manifest or .h5ad; with "
                   "--tiles: an image, a folder of images or a CSV/TSV manifest (path[, slide_id][, mpp])")
    add_data_options(p)
    p.add_argument("--encoder", required=True,
                   help="spafoundation-vitb16, random-vits16, timm:<arch>, hf-hub:<repo> or a model folder")
    p.add_argument("--weights", help="checkpoint file for the encoder (e.g. spafoundation_1m_vitb16.pth)")
    p.add_argument("--sections", help="comma-separated subset of sections")
    p.add_argument("--out", help="output .h5ad (default: embeddings_<encoder>.h5ad); with --tiles a folder "
                   "(default: tiles_<encoder>/)")
    p.add_argument("--cache-dir", help="embedding cache (default $SPAFOUNDATION_CACHE or ~/.cache/spafoundation)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations/flips of each patch")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps); under torchrun cuda means "
                   "one GPU per process")
    add_precision_option(p)
    add_stain_option(p)
    tiles = p.add_argument_group("whole slides (--tiles)")
    tiles.add_argument("--tiles", action="store_true",
                       help="embed a grid of encoder-sized tiles over each slide's tissue, one h5ad per slide; "
                       "shards slides across processes under torchrun and skips slides already done")
    tiles.add_argument("--min-tissue", type=unit_interval, default=0.25, help="least tissue share of a kept tile")
    tiles.add_argument("--workers", type=non_negative_int,
                       help="DataLoader reader processes (default: spare cores, <= 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
