"""The Python API (sf.read / sf.pp / sf.tl / sf.pl): one convention for several sections (a mapping of section ->
AnnData, or one AnnData with obs['section']) giving the same results, annotations written in place or into a copy,
predictions as new AnnData with the same obs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import spafoundation as sf
from spafoundation.errors import InputError

SECTIONS = ("C3", "C4")
N_SPOTS = 40


@pytest.fixture(autouse=True)
def _quiet_fp32():
    with sf.settings.override(progress=False, precision="fp32"):
        yield


@pytest.fixture
def pair(her2st_imaged):
    """40 spots of C3 and of C4, private copies."""
    return {n: her2st_imaged[n][:N_SPOTS].copy() for n in SECTIONS}


def _combined(pair):
    return ad.concat(list(pair.values()), uns_merge="unique")


def test_embed_writes_the_same_into_a_mapping_and_into_one_anndata(pair, tiny_encoder):
    combined = _combined(pair)
    assert sf.tl.embed(pair, tiny_encoder, key_added="X_tiny") is None
    copy = sf.tl.embed(combined, tiny_encoder, key_added="X_tiny", copy=True)
    assert "X_tiny" not in combined.obsm and copy.obsm["X_tiny"].shape == (2 * N_SPOTS, 32)
    np.testing.assert_array_equal(copy.obsm["X_tiny"], np.concatenate([pair[n].obsm["X_tiny"] for n in SECTIONS]))
    np.testing.assert_array_equal(copy.obs["tissue_fraction"].to_numpy(),
                                  np.concatenate([pair[n].obs["tissue_fraction"] for n in SECTIONS]))
    assert set(copy.uns["spafoundation_embeddings"]) == set(SECTIONS)


def test_expression_fit_predict_in_both_forms(pair, tiny_folder, tmp_path):
    model = sf.tl.fit_expression(pair, str(tiny_folder), genes="hvg:5")
    assert "fitted on C3, C4 (80 spots)" in repr(model) and "5 genes" in repr(model)
    preds = sf.tl.predict_expression(pair, model)
    assert set(preds) == set(SECTIONS) and preds["C4"].n_vars == 5
    assert preds["C4"].obs_names.equals(pair["C4"].obs_names) and "reliable" in preds["C4"].var
    one = sf.tl.predict_expression(_combined(pair), model)
    np.testing.assert_allclose(one.X, np.concatenate([preds[n].X for n in SECTIONS]), rtol=1e-5)
    assert set(one.uns["spafoundation_prediction"]["shift"]) == set(SECTIONS)
    model.save(tmp_path / "model")
    again = sf.tl.predict_expression(pair["C4"], str(tmp_path / "model"))
    np.testing.assert_allclose(again.X, preds["C4"].X, rtol=1e-5)


def test_expression_reference_in_both_forms(pair, her2st_root):
    """Count-only sections shape the programs, given as a mapping or as one AnnData of several sections."""
    reference = sf.read(her2st_root, sections=["B1", "D1"])
    options = {"genes": "hvg:5", "source": "colour_texture"}
    by_map = sf.tl.fit_expression(pair, None, reference=reference, **options)
    combined = sf.tl.fit_expression(pair, None, reference=_combined(reference), **options)
    assert by_map.training["reference"]["sections"] == ["B1", "D1"] == combined.training["reference"]["sections"]
    # one AnnData holds the genes both sections measure, so library sizes differ a little
    np.testing.assert_allclose(by_map.head.programs_part.loadings, combined.head.programs_part.loadings, atol=1e-3)


def test_domains_and_tumour_scores_are_shared_across_sections_in_both_forms(pair, tiny_encoder):
    combined = _combined(pair)
    options = {"encoder": tiny_encoder, "n_clusters": 3}
    sf.tl.spatial_domains(pair, **options)
    sf.tl.spatial_domains(combined, key_added="domain", **options)
    labels = np.concatenate([pair[n].obs["spatial_domain"].astype(str) for n in SECTIONS])
    np.testing.assert_array_equal(combined.obs["domain"].astype(str).to_numpy(), labels)
    assert list(combined.obs["domain"].cat.categories) == ["0", "1", "2"]
    assert "spatial_connectivities" in pair["C3"].obsp
    scored = sf.tl.tumor_score(combined, label_column="cluster_annotation", encoder=tiny_encoder, copy=True)
    assert "tumor_probability" not in combined.obs
    p = scored.obs["tumor_probability"].to_numpy()
    assert p.dtype == np.float64 and np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all()
    assert set(scored.uns["spafoundation_tumor"]) == set(SECTIONS)
    assert "roc_auc" in scored.uns["spafoundation_tumor"]["C4"]["metrics"]["supervised"]


def test_figures_come_back_as_figures_or_files(pair, tmp_path):
    pair["C3"].obs["spatial_domain"] = (np.arange(N_SPOTS) % 3).astype(str)
    fig = sf.pl.domains(pair, section="C3", reference="cluster_annotation")
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    assert sf.pl.domains(pair["C3"], path=tmp_path / "d.png").stat().st_size > 0
    with pytest.raises(ValueError, match="one section"):
        sf.pl.domains(pair)


def test_one_anndata_of_several_sections_needs_its_library_key(pair):
    combined = _combined(pair)
    del combined.obs["section"]
    with pytest.raises(InputError, match="library_key"):
        sf.tl.embed(combined)
    with pytest.raises(InputError, match="unknown section"):
        sf.pp.select_genes(pair, sections=["C9"])
    with pytest.raises(TypeError, match="AnnData"):
        sf.tl.spatial_domains([pair["C3"]])


def test_superres_fits_on_the_sections_with_counts_and_maps_each(her2st_imaged, tiny_encoder):
    data = {"C3": her2st_imaged["C3"].copy()}
    model = sf.tl.fit_superres(data, tiny_encoder, genes="hvg:3")
    assert "fitted on C3" in repr(model) and len(model.genes) == 3
    maps = sf.tl.superres(data, model)
    spa = maps["C3"]
    assert spa.n_vars == 3 and spa.n_obs > data["C3"].n_obs and list(spa.uns["spatial"]) == ["C3"]
    assert "counts" in spa.layers and spa.uns["superres"]["step_um"] == pytest.approx(model.encoder.patch_um / 2)
    fig = sf.pl.superres(maps, ["ERBB2", *model.genes[:1]])
    assert len([a for a in fig.axes if a.get_visible() and a.get_title()]) == 1


def _scanpy_made(a, library: str) -> ad.AnnData:
    """``a`` as ``sc.read_visium(path)`` gives a Visium sample: one library, Space Ranger metadata, the hires image
    as matplotlib reads a PNG (float32, 0-1) and its scale factor, no pixel size and no image file."""
    from spafoundation.io.anndata_spec import image_path, microns_per_pixel
    from spafoundation.io.slide import open_slide

    with open_slide(image_path(a)) as slide:
        hires, scalef = slide.thumbnail(600)
    made = ad.AnnData(a.X.copy(), obs=a.obs[[]].copy(), var=a.var[[]].copy())
    made.obsm["spatial"] = a.obsm["spatial"].copy()
    made.uns["spatial"] = {library: {
        "images": {"hires": (hires / 255.0).astype(np.float32)},
        "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": 55.0 / microns_per_pixel(a)},
        "metadata": {"software_version": "spaceranger-2.0.0"}}}
    return made


def test_an_anndata_made_by_scanpy_is_read_from_its_own_hires_image(pair, tiny_encoder, caplog):
    """What most public Visium deposits give scanpy users: no full-resolution H&E, only the hires array in uns.
    Every sf.tl function reads it at its scale (a warning says the effective resolution), writing the completed
    library into the caller's own uns; the same array again is a cache hit."""
    made = _scanpy_made(pair["C3"], "lib1")
    sf.tl.embed(made, tiny_encoder, key_added="X_tiny")
    lib = made.uns["spatial"]["lib1"]
    assert lib["metadata"]["image_source"] == "uns['spatial']['lib1']['images']['hires']"
    assert lib["scalefactors"]["microns_per_pixel"] == pytest.approx(sf.io.anndata_spec.microns_per_pixel(pair["C3"]))
    assert made.obsm["X_tiny"].shape == (N_SPOTS, 32) and "um/px instead of" in caplog.text
    again = _scanpy_made(pair["C3"], "lib1")
    sf.tl.embed(again, tiny_encoder, key_added="X_tiny")
    assert again.uns["spafoundation_embeddings"]["X_tiny"]["cache"] == "hit"
    np.testing.assert_array_equal(again.obsm["X_tiny"], made.obsm["X_tiny"])
    # two samples concatenated as scanpy users do (obs['library_id']): each library completed in place
    both = ad.concat({n: _scanpy_made(a, n) for n, a in pair.items()}, label="library_id", uns_merge="unique",
                     index_unique="-")
    sf.tl.spatial_domains(both, n_clusters=2, library_key="library_id")
    assert all(both.uns["spatial"][n]["metadata"]["image_path"] for n in pair)
    assert both.obs["spatial_domain"].notna().all()


def test_an_anndata_of_unknown_pixel_size_is_refused_naming_the_field(pair, tiny_encoder):
    made = _scanpy_made(pair["C3"], "lib1")
    del made.uns["spatial"]["lib1"]["metadata"]["software_version"]  # not Space Ranger's: no 55 um spot to go by
    with pytest.raises(InputError, match=r"\['lib1'\]\['scalefactors'\]\['microns_per_pixel'\].*unknown pixel size"):
        sf.tl.embed(made, tiny_encoder)
    made.uns["spatial"]["lib1"]["scalefactors"]["microns_per_pixel"] = 0.69
    sf.tl.embed(made, tiny_encoder, key_added="X_tiny")  # given by the user: read as such
    assert made.uns["spatial"]["lib1"]["metadata"]["mpp_source"] == "stored in the AnnData's uns"


def _scanpy_normalised(data: dict, keep_counts: bool = True) -> dict:
    """Each section as a scanpy user leaves it: sc.pp.normalize_total + log1p in X, the counts in layers['counts']."""
    import scanpy as sc

    out = {}
    for n, a in data.items():
        b = a.copy()
        if keep_counts:
            b.layers["counts"] = b.X.copy()
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
        out[n] = b
    return out


def test_sections_scanpy_normalised_are_read_through_the_counts_they_keep(pair, tiny_folder, caplog):
    """X normalised and log-transformed by scanpy is not counts: every function that reads counts takes
    layers['counts'] instead, so genes, targets and models are those of the raw counts; results still go into
    the caller's objects."""
    lognorm = _scanpy_normalised(pair)
    assert sf.pp.select_genes(lognorm, "hvg:5") == sf.pp.select_genes(pair, "hvg:5")
    sf.pp.normalize(lognorm, key_added="t")
    sf.pp.normalize(pair, key_added="t")
    np.testing.assert_allclose(lognorm["C3"].layers["t"], pair["C3"].layers["t"], rtol=1e-6)
    ours = sf.tl.predict_expression(pair["C4"], sf.tl.fit_expression(pair, str(tiny_folder), genes="hvg:5"))
    theirs = sf.tl.predict_expression(lognorm["C4"], sf.tl.fit_expression(lognorm, str(tiny_folder), genes="hvg:5"))
    np.testing.assert_allclose(theirs.X, ours.X, rtol=1e-5)
    sf.tl.spatial_domains(lognorm, features="expression", n_clusters=2)
    assert lognorm["C3"].obs["spatial_domain"].notna().all() and lognorm["C3"].layers["t"] is not None
    # normalised with no counts kept: taken as they are, with one warning line saying so
    sf.pp.select_genes(_scanpy_normalised(pair, keep_counts=False), "hvg:5")
    assert "X holds non-integer values and no layers['counts']" in caplog.text


def test_a_gene_named_twice_is_refused_naming_it(pair):
    twice = pair["C3"].copy()
    names = list(twice.var_names)
    names[1] = names[0]
    twice.var_names = names
    with pytest.raises(InputError, match=rf"var_names: section C3: gene names repeated, e.g. \['{names[0]}'\]"):
        sf.pp.select_genes(twice, "hvg:5")


def test_superres_warns_when_the_image_is_coarser_than_its_superpixels(her2st_c2, caplog):
    """A hires-only copy read as the H&E (image_scale 0.25: 2.8 um/px for C2) holds under two pixels per 4 um
    superpixel: one warning says so; 16 um superpixels, or the full-resolution H&E, get none."""
    import logging

    from spafoundation.io.anndata_spec import spatial_meta
    from spafoundation.tl._superres import warn_if_coarser_than_superpixels

    copy = her2st_c2.copy()
    spatial_meta(copy)["metadata"]["image_scale"] = 0.25
    with caplog.at_level(logging.WARNING):
        warn_if_coarser_than_superpixels("C2", copy, 4.0)
        warn_if_coarser_than_superpixels("C2", copy, 16.0)
        warn_if_coarser_than_superpixels("C2", her2st_c2, 4.0)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("section C2: its H&E holds 2.8 um/px of detail, 1.5 pixels")


def test_namespaces_show_their_functions_not_their_imports():
    """Tab completion on sf.pp / sf.tl / sf.pl lists what a user calls, as scanpy's namespaces do."""
    import subprocess
    import sys

    import spafoundation as sf

    # a fresh process: sf.io is there before anything imported it, and sf.<tab> lists every namespace
    code = ("import spafoundation as sf; assert callable(sf.io.add_to_spatialdata); "
            "assert {'read', 'pp', 'tl', 'pl', 'io', 'settings'} <= set(dir(sf)), dir(sf)")
    subprocess.run([sys.executable, "-c", code], check=True)
    for namespace in (sf.pp, sf.tl, sf.pl):
        shown = [n for n in dir(namespace) if not n.startswith("_")]
        assert set(namespace.__all__) <= set(shown)
        assert not {"np", "ad", "Sections", "Mapping", "Sequence", "copy_data", "defaults"} & set(shown)
        assert all(callable(getattr(namespace, n)) for n in namespace.__all__)
