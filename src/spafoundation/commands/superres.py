"""``spafoundation superres DATA --out DIR``: expression on a superpixel grid (16 um by default) over the tissue.

Trains on the selected sections with counts (or loads ``--model``), then maps every selected imaged section:
``DIR/<section>.h5ad`` (superpixels x genes), ``DIR/<section>_maps.npz`` (genes x rows x cols, NaN off tissue),
``DIR/<section>_superres.png`` and the model in ``DIR/model``."""

from __future__ import annotations

import time
from pathlib import Path

from spafoundation import defaults
from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_format_option,
    add_precision_option,
    api_settings,
    check_format_available,
    command_dataset,
    imaged_sections,
    parse_sections,
    positive_float,
    unit_interval,
)
from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_dir, check_output_dir


def run(args, data: dict | None = None) -> int:
    import numpy as np

    from spafoundation import pl, tl
    from spafoundation.tasks.superres import SuperresModel, grid_images

    out = Path(args.out)
    check_output_dir(out)  # before the work: never replace a folder of the user's
    check_format_available(args)
    data = command_dataset(args, data, parse_sections(args.sections), imaged_only=True)
    imaged = imaged_sections(data, args.data)
    train_names = parse_sections(args.train_sections)
    for s in train_names or []:
        if s not in imaged or imaged[s].n_vars == 0:
            raise InputError(args.data, "--train-sections", f"section {s} is not a selected imaged section with counts")
    cached = {}  # the training sections' superpixels, computed once for the fit and the maps
    if args.model:
        model = SuperresModel.load(args.model, encoder=args.encoder)
    else:
        train = {n: a for n, a in imaged.items() if a.n_vars > 0 and (not train_names or n in train_names)}
        if not train:
            raise InputError(args.data, "counts", "no selected imaged section has counts to train on; give --model")
        t0 = time.perf_counter()
        with api_settings(args):
            model = tl.fit_superres(train, args.encoder or defaults.ENCODER, genes=args.genes, step_um=args.step_um,
                                    superpixels=cached)
        w = model.anchoring
        print(f"fitted on {', '.join(train)} ({model.training['n_spots']} spots, {len(model.genes)} genes) in "
              f"{time.perf_counter() - t0:.0f} s; anchoring weights image {w['image']:.2f}, neighbours "
              f"{w['interpolation']:.2f} ({w['method']})")
    stored = {}  # --format spatialdata: the superpixels, written as one store after the last section
    with atomic_dir(out) as tmp:
        if not args.model:
            model.save(tmp / "model")
        for n in imaged:
            t0 = time.perf_counter()
            with api_settings(args):  # section by section: each is written before the next is mapped
                spa = tl.superres(imaged, model, sections=[n], image_weight=args.image_weight,
                                  superpixels=cached)[n]
            if args.format == "spatialdata":
                stored[n] = spa
            else:
                spa.write_h5ad(tmp / f"{n}.h5ad")
            np.savez_compressed(tmp / f"{n}_maps.npz", maps=grid_images(spa), genes=np.array(model.genes),
                                step_um=spa.uns["superres"]["step_um"])
            if not args.no_figure:
                genes = args.genes_to_draw.split(",") if args.genes_to_draw else model.genes[:4]
                pl.superres(spa, [g for g in genes if g in model.genes], path=tmp / f"{n}_superres.png")
            extra = ""
            if "counts" in spa.layers:
                w = spa.uns["superres"]["anchoring"]
                extra = (f"; anchored with image {w['image']:.2f}, neighbours {w['interpolation']:.2f} (weights "
                         f"from {w['weights_from']}); spot counts redistributed over their superpixels "
                         "(layers['counts'])")
            print(f"{n}: {spa.n_obs} superpixels of {spa.uns['superres']['step_um']:g} um x {spa.n_vars} genes in "
                  f"{time.perf_counter() - t0:.0f} s{extra}")
        if stored:
            from spafoundation.io.spatialdata_write import write_spatialdata

            write_spatialdata(tmp / "superres.zarr", {n: imaged[n] for n in stored}, superres=stored)
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("superres", help="expression maps on a superpixel grid much finer than the spots")
    p.add_argument("data", help="dataset folder, manifest or .h5ad")
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sections", help="comma-separated sections to map (default: every imaged section)")
    p.add_argument("--train-sections", help="sections with counts to train on (default: every selected one)")
    p.add_argument("--model", help="a model folder from an earlier superres run (DIR/model)")
    p.add_argument("--encoder", help="encoder name or model folder (default: spafoundation-default)")
    p.add_argument("--genes", default=defaults.SUPERRES_GENES,
                   help=f"hvg:K, mean:K or a gene-list file (default {defaults.SUPERRES_GENES})")
    p.add_argument("--step-um", type=positive_float,
                   help="superpixel pitch: one encoder token (16 um by default) divided by a whole number, e.g. 8")
    p.add_argument("--image-weight", type=unit_interval,
                   help="inside measured spots, how much of the image's pattern to keep around the measurement "
                        "(0: flat at the measurement, 1: the full image pattern; default: the weight learned by "
                        "scale transfer on the section's own spots, or the model's stored one where the section "
                        "has too few or trained the model)")
    add_format_option(p, "DIR/superres.zarr, in place of the <section>.h5ad files")
    p.add_argument("--genes-to-draw", help="comma-separated genes for the figure (default: the first 4)")
    p.add_argument("--no-figure", action="store_true")
    add_cache_args(p)  # --cache-dir, --no-cache, --quiet: superpixel features are cached like spot embeddings
    add_precision_option(p)
    p.set_defaults(func=run)
