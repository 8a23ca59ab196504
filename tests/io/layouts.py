"""Writers of small on-disk datasets in each supported layout, made from real HER2ST section C2.

The image is the C2 JPEG decoded at 1/4 scale (JPEG draft mode, fast) and saved as a tiled TIFF, so spot
coordinates are divided by 4 and the pixel size multiplied by 4; counts keep the first N_GENES genes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import tifffile
import yaml
from PIL import Image

from spafoundation.io.anndata_spec import image_path, microns_per_pixel

N_GENES = 300
DOWNSCALE = 4


class C2Small:
    """C2 at 1/4 scale: counts (spots x N_GENES, CSR int), barcodes, genes, xy (px of the small image), mpp."""

    def __init__(self, adata: ad.AnnData, folder: Path):
        self.counts = sp.csr_matrix(adata.X[:, :N_GENES]).astype(np.int32)
        self.genes = list(adata.var_names[:N_GENES])
        self.ids = [i.split("_", 1)[1] for i in adata.obs_names]
        self.array_rc = adata.obs[["array_row", "array_col"]].to_numpy()
        self.xy = adata.obsm["spatial"] / DOWNSCALE
        self.mpp = microns_per_pixel(adata) * DOWNSCALE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the 92 Mpx C2 JPEG is trusted
            img = Image.open(image_path(adata))
        with img:
            w, h = img.size
            img.draft("RGB", (w // DOWNSCALE, h // DOWNSCALE))
            self.rgb = np.asarray(img.convert("RGB").resize((w // DOWNSCALE, h // DOWNSCALE)))
        folder.mkdir(parents=True, exist_ok=True)
        self.tiff = folder / "C2_small.tif"
        tifffile.imwrite(self.tiff, self.rgb, tile=(256, 256), compression="zlib", photometric="rgb")


def write_counts_h5(path: Path, c: C2Small, barcodes: list[str], counts: sp.csr_matrix | None = None) -> None:
    """The 10x HDF5 layout: genes x barcodes CSC stored as CSR of barcodes x genes (``counts``: else C2's)."""
    X = (c.counts if counts is None else counts).tocsr()
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = X.data, X.indices, X.indptr
        m["shape"] = np.array([X.shape[1], X.shape[0]])
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:011d}".encode() for i in range(len(c.genes))])
        feats["name"] = np.array([g.encode() for g in c.genes])
        feats["feature_type"] = np.array([b"Gene Expression"] * len(c.genes))


def visium_barcodes(c: C2Small) -> list[str]:
    return [f"AAAC{i:06d}-1" for i in range(len(c.ids))]


def write_visium(
    root: Path, c: C2Small, *, header: bool = True, mtx: bool = False, spot_diameter=True
) -> Path:
    """A Space Ranger outs/ folder; two extra positions off tissue check the in_tissue filter."""
    outs = root / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    barcodes = visium_barcodes(c)
    if mtx:
        folder = outs / "filtered_feature_bc_matrix"
        folder.mkdir(exist_ok=True)
        scipy.io.mmwrite(folder / "matrix.mtx", c.counts.T.tocoo())
        (folder / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")
        (folder / "features.tsv").write_text(
            "".join(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(c.genes))
        )
    else:
        write_counts_h5(outs / "filtered_feature_bc_matrix.h5", c, barcodes)
    on = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": c.array_rc[:, 0],
            "array_col": c.array_rc[:, 1],
            "pxl_row_in_fullres": c.xy[:, 1],
            "pxl_col_in_fullres": c.xy[:, 0],
        }
    )
    off = pd.DataFrame(
        {
            "barcode": ["TTTT000001-1", "TTTT000002-1"],
            "in_tissue": 0,
            "array_row": 0,
            "array_col": [0, 2],
            "pxl_row_in_fullres": 5.0,
            "pxl_col_in_fullres": [5.0, 9.0],
        }
    )
    pos = pd.concat([on, off], ignore_index=True)
    if header:
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        pos.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    hires_scalef = 0.25
    small = Image.fromarray(c.rgb).resize(
        (round(c.rgb.shape[1] * hires_scalef), round(c.rgb.shape[0] * hires_scalef))
    )
    small.save(spatial / "tissue_hires_image.png")
    scale = {
        "tissue_hires_scalef": hires_scalef,
        "tissue_lowres_scalef": 0.05,
        "fiducial_diameter_fullres": 100.0,
    }
    if spot_diameter:
        # what Space Ranger writes: the 55 um spot in full-resolution pixels
        scale["spot_diameter_fullres"] = 55.0 / c.mpp
    (spatial / "scalefactors_json.json").write_text(json.dumps(scale))
    (root / "C2_small.tif").symlink_to(c.tiff)
    return root


def write_hest(root: Path, c: C2Small, sample_id: str = "TENX99", meta: dict | None = None) -> Path:
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    src = ad.AnnData(
        X=c.counts.copy(),
        obs=pd.DataFrame(
            {"array_row": c.array_rc[:, 0], "array_col": c.array_rc[:, 1], "in_tissue": 1}, index=c.ids
        ),
        var=pd.DataFrame(index=c.genes),
    )
    src.obsm["spatial"] = c.xy.copy()
    src.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    (root / "wsis" / f"{sample_id}.tif").symlink_to(c.tiff)
    metadata = {
        "pixel_size_um_estimated": c.mpp,
        "pixel_size_um_embedded": c.mpp * 1.1,
        "st_technology": "Spatial Transcriptomics",
        "spot_diameter": 100.0,
        "inter_spot_dist": 200.0,
        "patient": "C",
    }
    metadata.update(meta or {})
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(metadata))
    return root


def write_manifest(root: Path, c: C2Small, *, counts: str = "tsv", section: dict | None = None) -> Path:
    """A generic manifest with one section; ``section`` overrides its entries (None values delete them)."""
    root.mkdir(parents=True, exist_ok=True)
    spots = pd.DataFrame(
        {
            "id": c.ids,
            "x": c.xy[:, 0],
            "y": c.xy[:, 1],
            "array_row": c.array_rc[:, 0],
            "array_col": c.array_rc[:, 1],
        }
    )
    spots.to_csv(root / "spots.csv", index=False)
    entry = {"id": "S1", "patient": "C", "image": "C2_small.tif", "spots": "spots.csv", "mpp": float(c.mpp)}
    if counts == "tsv":
        pd.DataFrame(c.counts.toarray(), index=c.ids, columns=c.genes).to_csv(root / "counts.tsv", sep="\t")
        entry["counts"] = "counts.tsv"
    elif counts == "mtx":
        scipy.io.mmwrite(root / "matrix.mtx", c.counts.T.tocoo())
        (root / "barcodes.tsv").write_text("\n".join(c.ids) + "\n")
        (root / "features.tsv").write_text("\n".join(c.genes) + "\n")
        entry["counts"] = {"mtx": "matrix.mtx", "barcodes": "barcodes.tsv", "features": "features.tsv"}
    elif counts == "h5ad":
        ad.AnnData(
            X=c.counts.copy(), obs=pd.DataFrame(index=c.ids), var=pd.DataFrame(index=c.genes)
        ).write_h5ad(root / "counts.h5ad")
        entry["counts"] = "counts.h5ad"
    if not (root / "C2_small.tif").exists():
        (root / "C2_small.tif").symlink_to(c.tiff)
    for k, v in (section or {}).items():
        if v is None:
            entry.pop(k, None)
        else:
            entry[k] = v
    manifest = {"platform": "legacy_st", "spot_diameter_um": 100, "sections": [entry]}
    (root / "spafoundation.yaml").write_text(yaml.safe_dump(manifest))
    return root / "spafoundation.yaml"


def split_counts(counts: sp.csr_matrix, parts: int, seed: int = 0) -> list[sp.csr_matrix]:
    """``parts`` count matrices that sum to ``counts``: every count falls in one part, uniformly at random."""
    rng = np.random.default_rng(seed)
    coo = counts.tocoo()
    shares = rng.multinomial(coo.data.astype(np.int64), np.full(parts, 1.0 / parts))
    return [sp.csr_matrix((shares[:, i], (coo.row, coo.col)), shape=counts.shape) for i in range(parts)]


def write_visium_hd(root: Path, c: C2Small, levels: tuple[int, ...] = (100,)) -> Path:
    """A Visium HD outs/ folder from C2: at level 200 um each C2 spot (200 um pitch) is one bin; at 100 um it is
    split into its 2 x 2 bins (counts shared out at random, bin centres a quarter pitch off the spot centre), so
    summing 2 x 2 blocks of the 100 um bins gives back C2. Two bins off tissue check the in_tissue filter."""
    pitch_px = 200.0 / c.mpp
    for level in levels:
        k = 200 // level
        folder = root / "outs" / "binned_outputs" / f"square_{level:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        parts = split_counts(c.counts, k * k)
        rows, cols, xs, ys, mats = [], [], [], [], []
        for i, (dr, dc) in enumerate((a, b) for a in range(k) for b in range(k)):
            rows.append(c.array_rc[:, 0] * k + dr)
            cols.append(c.array_rc[:, 1] * k + dc)
            xs.append(c.xy[:, 0] + (dc - (k - 1) / 2) * pitch_px / k)
            ys.append(c.xy[:, 1] + (dr - (k - 1) / 2) * pitch_px / k)
            mats.append(parts[i])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        barcodes = [f"s_{level:03d}um_{r:05d}_{q:05d}-1" for r, q in zip(rows, cols, strict=True)]
        counts = sp.vstack(mats).tocsr().astype(np.int32)
        write_counts_h5(folder / "filtered_feature_bc_matrix.h5", c, barcodes, counts)
        pos = pd.DataFrame({"barcode": [*barcodes, "s_off_1-1", "s_off_2-1"],
                            "in_tissue": [1] * len(barcodes) + [0, 0],
                            "array_row": [*rows, 0, 0], "array_col": [*cols, 0, 1],
                            "pxl_row_in_fullres": [*np.concatenate(ys), 5.0, 5.0],
                            "pxl_col_in_fullres": [*np.concatenate(xs), 5.0, 9.0]})
        pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        Image.fromarray(c.rgb).resize((c.rgb.shape[1] // 4, c.rgb.shape[0] // 4)).save(
            folder / "spatial" / "tissue_hires_image.png")
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps({
            "microns_per_pixel": c.mpp, "bin_size_um": float(level), "spot_diameter_fullres": level / c.mpp,
            "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05}))
    (root / "C2_small.tif").symlink_to(c.tiff)
    return root



def write_visium_hires_only(root: Path, adata: ad.AnnData, c: C2Small) -> Path:
    """A Space Ranger sample as public deposits ship it: counts, full-resolution spot positions and spatial/ with
    only ``tissue_hires_image.png`` (the long side 2000 px, as Space Ranger writes it) and its scale factor; no
    full-resolution H&E. Counts are all of ``adata``'s genes, positions its own (C2's full-resolution pixels)."""
    outs = root / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    barcodes = visium_barcodes(c)
    genes = list(adata.var_names)
    full = C2Small.__new__(C2Small)  # C2's counts with every gene, for the HDF5 writer
    full.counts, full.genes = sp.csr_matrix(adata.X).astype(np.int32), genes
    write_counts_h5(outs / "filtered_feature_bc_matrix.h5", full, barcodes)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": c.array_rc[:, 0], "array_col": c.array_rc[:, 1],
                  "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0]}).to_csv(
        spatial / "tissue_positions.csv", index=False)
    full_h, full_w = (s * DOWNSCALE for s in c.rgb.shape[:2])
    hires_scalef = 2000 / max(full_h, full_w)
    size = (round(full_w * hires_scalef), round(full_h * hires_scalef))
    Image.fromarray(c.rgb).resize(size, Image.LANCZOS).save(spatial / "tissue_hires_image.png")
    mpp = microns_per_pixel(adata)
    (spatial / "scalefactors_json.json").write_text(json.dumps({
        "tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": hires_scalef * 0.3,
        "fiducial_diameter_fullres": 89.0 / mpp, "spot_diameter_fullres": 55.0 / mpp}))
    return root


XENIUM_CELLS_PER_SPOT = 5


def xenium_alignment(c: C2Small, pixel_size: float, bin_um: float) -> np.ndarray:
    """H&E px -> morphology px as Xenium Explorer writes it: the H&E turned 90 degrees (as 10x's public breast
    datasets are) and scaled by its pixel size over the morphology's, shifted so that every C2 spot (200 um pitch)
    sits at the centre of a ``bin_um`` square of the micron frame (bin_um a divisor of 200)."""
    s = c.mpp / pixel_size
    turn = np.array([[0.0, -s, 0.0], [s, 0.0, 0.0], [0.0, 0.0, 1.0]])
    um = (np.c_[c.xy, np.ones(len(c.xy))] @ turn.T)[:, :2] * pixel_size
    angle = np.angle(np.exp(2j * np.pi * um / bin_um).mean(axis=0))  # the grid's phase in each axis
    phase = angle / (2 * np.pi) * bin_um
    shift_um = bin_um / 2 - phase + bin_um * np.ceil((500 - um.min(axis=0)) / bin_um)
    turn[:2, 2] = shift_um / pixel_size
    return turn


def write_xenium(root: Path, c: C2Small, *, pixel_size: float = 2.0, name: str = "X1", bin_um: float = 200.0,
                 alignment: bool = True, morphology: bool = False) -> Path:
    """A Xenium output folder from C2: each spot's counts shared out at random among 5 cells within 30 um of its
    centre; the H&E (C2 at 1/4 scale) as ``<name>_he_image.ome.tif`` beside its alignment CSV
    (``xenium_alignment``), so that summing the cells into ``bin_um`` squares gives back C2's spots. ``pixel_size``:
    the morphology image's um/px (Xenium's is 0.2125; 2 keeps a test's morphology image small). ``morphology``: also
    the files spatialdata-io's reader needs (an empty ``cells.zarr.zip`` of an XOA 1.0 run and a one-channel uint16
    DAPI ``morphology_mip.ome.tif``, finer than the H&E)."""

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    to_morph = xenium_alignment(c, pixel_size, bin_um)
    parts = split_counts(c.counts, XENIUM_CELLS_PER_SPOT)
    n = len(c.xy)
    radius = np.sqrt(rng.uniform(0, 1, (XENIUM_CELLS_PER_SPOT, n))) * 30.0 / c.mpp
    angle = rng.uniform(0, 2 * np.pi, (XENIUM_CELLS_PER_SPOT, n))
    he_xy = np.concatenate([c.xy + np.stack([r * np.cos(a), r * np.sin(a)], axis=1) for r, a in zip(radius, angle)])
    um = (np.c_[he_xy, np.ones(len(he_xy))] @ to_morph.T)[:, :2] * pixel_size
    ids = [f"cell{i:06d}" for i in range(len(he_xy))]
    write_counts_h5(root / "cell_feature_matrix.h5", c, ids, sp.vstack(parts).tocsr())
    pd.DataFrame({"cell_id": ids, "x_centroid": um[:, 0], "y_centroid": um[:, 1],
                  "transcript_counts": np.asarray(sp.vstack(parts).sum(axis=1)).ravel(),
                  "cell_area": 80.0, "nucleus_area": 30.0}).to_parquet(root / "cells.parquet", index=False)
    (root / "experiment.xenium").write_text(json.dumps({"pixel_size": pixel_size, "run_name": name,
                                                       "analysis_sw_version": "xenium-1.0.2"}))
    he = root / f"{name}_he_image.ome.tif"
    tifffile.imwrite(he, c.rgb, ome=True, photometric="rgb", tile=(256, 256), compression="zlib")
    if alignment:
        np.savetxt(root / f"{name}_he_imagealignment.csv", to_morph, delimiter=",")
    if morphology:
        import zarr

        with zarr.storage.ZipStore(root / "cells.zarr.zip", mode="w") as store:
            zarr.open_group(store, mode="w")
        h, w = (int(v) + 1 for v in np.ceil(um.max(axis=0)[::-1] / pixel_size) + 200)
        dapi = np.zeros((1, h, w), np.uint16)
        dapi[0, ::7, ::5] = 4000
        tifffile.imwrite(root / "morphology_mip.ome.tif", dapi, ome=True, photometric="minisblack",
                         tile=(256, 256), compression="zlib", metadata={"axes": "CYX"})
    return root
