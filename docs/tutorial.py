# %% [markdown]
# # spafoundation from Python: HER2ST end to end
#
# Read the HER2ST breast cancer sections, embed every spot's H&E patch, fit gene expression on four sections and
# predict a fifth from its image alone, then score tumour and find spatial domains, all with scanpy's plots.
# A script in jupytext's percent format: run it as is (`python docs/tutorial.py`), or open it as a notebook
# (`jupytext --to notebook docs/tutorial.py`). The tests run it on a few spots per section
# (`SPAFOUNDATION_TUTORIAL_SPOTS`), so every call here is checked to work.

# %%
import os
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

import spafoundation as sf

DATA = Path(os.environ.get("SPAFOUNDATION_HER2ST", "../shared/data/her2st"))
OUT = Path(os.environ.get("SPAFOUNDATION_TUTORIAL_OUT", "tutorial_out"))
TRAIN, TEST = ["C2", "C3", "C4", "C5"], "C6"  # patient C: fit on four sections, predict the fifth
N_SPOTS = int(os.environ.get("SPAFOUNDATION_TUTORIAL_SPOTS", "0")) or None  # all spots unless set (the tests: 40)
GENES = "hvg:50" if N_SPOTS is None else "hvg:8"

# Session-wide choices live in one object (scanpy's sc.settings): device, encoder precision ("auto": int8 on CPU,
# 1.5-2x faster at unchanged accuracy), cache folder, threads, progress bars.
sf.settings.progress = N_SPOTS is None
print(sf.settings)

# %% [markdown]
# ## Read
# `sf.read` detects the layout (legacy ST, Visium, Visium HD, HEST, a manifest, an .h5ad) and returns one AnnData
# per section: raw counts in `X`, spot centres in `obsm['spatial']`, the H&E in `uns['spatial'][section]`.

# %%
data = sf.read(DATA, sections=[*TRAIN, TEST])
if N_SPOTS:  # a random subset of each section's spots, for the tests
    rng = np.random.default_rng(0)
    data = {n: a[np.sort(rng.choice(a.n_obs, min(N_SPOTS, a.n_obs), replace=False))].copy() for n, a in data.items()}
data[TEST]

# %%
sc.pl.spatial(data[TEST], img_key="hires", color="cluster_annotation", show=False)

# %% [markdown]
# ## Embed
# One embedding per spot from the shipped encoder (a ViT-Ti/16 pre-trained on H&E), cached on disk so that the
# steps below read it instead of recomputing it. `spafoundation.models.list_encoders()` lists the others.

# %%
sf.tl.embed(data)
key = next(k for k in data[TEST].obsm if k.startswith("X_"))
print(key, data[TEST].obsm[key].shape)

# %% [markdown]
# ## Expression from H&E
# Fit on the training sections (genes chosen on them only), predict the held-out section from its image alone.
# The model knows which genes to trust: each gene's cross-validated r over held-out training sections.

# %%
model = sf.tl.fit_expression(data, sections=TRAIN, genes=GENES)
print(model)
print("reliable genes:", model.reliable()[:10])

# %%
pred = sf.tl.predict_expression(data[TEST], model)  # a new AnnData: same obs and uns['spatial'], X = predictions
pred.var.head()

# %%
shown = (model.reliable() or list(pred.var_names))[:2]
sc.pl.spatial(pred, img_key="hires", color=shown, show=False)
sf.pl.expression(pred, shown, observed=data[TEST])  # observed above predicted, with each gene's r

# %% [markdown]
# ## Tumour score
# A classifier on the spots' image features, trained on the pathologist's regions (`cluster_annotation`); each
# training section is scored by a model fitted without it. Without labels, `route="markers"` learns tumour marker
# genes instead.

# %%
sf.tl.tumor_score(data, label_column="cluster_annotation")
print({n: round(a.uns["spafoundation_tumor"]["metrics"]["supervised"]["roc_auc"], 3) for n, a in data.items()})
sc.pl.spatial(data[TEST], img_key="hires", color="tumor_probability", color_map="magma", show=False)

# %% [markdown]
# ## Spatial domains, on one AnnData of all sections
# Every `sf.tl` function also takes one AnnData of several sections (squidpy's layout: `obs['section']` and every
# library in `uns['spatial']`). Domains are shared: a domain means the same tissue in every section. By default they
# come from each spot's colour/texture, z-scored within its section (`features="image"` adds the encoder).

# %%
adata = ad.concat(list(data.values()), uns_merge="unique")
sf.tl.spatial_domains(adata, n_clusters=6)
test_spots = adata[adata.obs["section"] == TEST]
sc.pl.spatial(test_spots, img_key="hires", library_id=TEST, color=["spatial_domain", "cluster_annotation"],
              show=False)
sc.metrics.confusion_matrix("cluster_annotation", "spatial_domain", test_spots.obs)

# %% [markdown]
# ## Save and load
# Models are folders (`save` / `load`; `spafoundation predict-expression MODEL_DIR DATA` reads the same folder);
# results are ordinary .h5ad files.

# %%
OUT.mkdir(parents=True, exist_ok=True)
model.save(OUT / "expression_model")
again = sf.tl.predict_expression(data[TEST], sf.tl.ExpressionModel.load(OUT / "expression_model"))
assert np.allclose(again.X, pred.X, atol=1e-5)
pred.write_h5ad(OUT / f"{TEST}_predicted.h5ad")
adata.write_h5ad(OUT / "domains.h5ad")
print(sc.read_h5ad(OUT / "domains.h5ad"))
