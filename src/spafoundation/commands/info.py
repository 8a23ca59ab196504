"""``spafoundation info PATH``: what a dataset holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spafoundation.commands._common import add_data_options, data_options, parse_sections

if TYPE_CHECKING:
    import pandas as pd

LABEL_COLUMNS = ("label", "cluster_annotation")


def summarize(path, sections=None, **options) -> pd.DataFrame:
    """One row per section; ``options``: ``read_dataset``'s (bin_um, image, image_scale, mpp)."""
    import pandas as pd

    from spafoundation.io.anndata_spec import spatial_meta
    from spafoundation.io.readers import read_dataset

    data = read_dataset(path, sections, with_images=False, **options)
    rows = []
    for name, adata in data.items():
        meta = spatial_meta(adata)
        size = meta["metadata"].get("image_size")
        has_image = size is not None and len(size) > 0
        labels = [c for c in LABEL_COLUMNS if c in adata.obs and adata.obs[c].notna().any()]
        mpp = float(meta["scalefactors"]["microns_per_pixel"])
        scale = float(meta["metadata"].get("image_scale", 1.0))
        rows.append(
            {
                "section": name,
                "patient": adata.obs["patient"].iloc[0] if "patient" in adata.obs else "",
                "spots": adata.n_obs,
                "genes": adata.n_vars,
                # the file too: a Space Ranger sample's image is found in its folder, and the user should see which
                "image": Path(meta["metadata"]["image_path"]).name if has_image else "-",
                "image px": "x".join(str(int(v)) for v in size) if has_image else "-",
                "um/px": round(mpp, 4),
                "um/px source": meta["metadata"].get("mpp_source", ""),
                # where the image came from, its scale against the spot coordinates' full-resolution frame, and the
                # resolution it really has
                "image source": meta["metadata"].get("image_source") or "dataset" if has_image else "-",
                "image scale": f"{scale:.4g}" if has_image else "-",
                "image um/px": round(mpp / scale, 4) if has_image else "-",
                "labels": ",".join(labels) or "-",
                "spot um": f"{meta['metadata'].get('spot_diameter_um', float('nan')):g}",
            }
        )
        levels = meta["metadata"].get("bin_levels_um")
        if levels is not None:
            rows[-1]["bins"] = (f"{meta['metadata']['bins_read_um']:g} um of "
                                f"{', '.join(f'{v:g}' for v in levels)} (--bin-um)")
    return pd.DataFrame(rows)


def run(args) -> int:
    from spafoundation.io.readers import detect_format

    fmt = detect_format(args.path)
    table = summarize(args.path, parse_sections(args.sections), **data_options(args))
    n_img = int((table["image"] != "-").sum())
    print(f"{args.path}  format: {fmt}")
    print(table.to_string(index=False))
    print(
        f"\n{len(table)} sections, {n_img} with images, {int(table['spots'].sum())} spots, "
        f"{int(table['genes'].max()) if len(table) else 0} genes at most"
    )
    if n_img < len(table):
        print("image -: no H&E found for the section (a Space Ranger sample's full-resolution H&E goes in its "
              "folder or is given with --image)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="summarise a dataset: sections, spots, genes, image file and size, um/px, labels"
    )
    p.add_argument("path", help="dataset folder (legacy ST, Space Ranger outs/ of Visium or Visium HD, HEST), manifest or .h5ad")
    p.add_argument("--sections", help="comma-separated subset of sections")
    add_data_options(p)
    p.set_defaults(func=run)
