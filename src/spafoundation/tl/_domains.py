"""``sf.tl.spatial_domains``: tissue domains shared across sections."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections, copy_data
from spafoundation.tl._common import cache_dir, encoder_for, progress

UNS_KEY = "spafoundation_clustering"


def spatial_domains(data, *, features: str = defaults.DOMAIN_FEATURES, encoder=defaults.ENCODER,
                    expression_model=None, genes=defaults.DOMAIN_EXPRESSION_GENES,
                    method: str = defaults.DOMAIN_METHOD, n_clusters: int | None = defaults.N_DOMAINS,
                    resolution: float | None = None, smooth: float = defaults.DOMAIN_SMOOTH,
                    radius_um: float | None = None, seed: int = 0, sections=None, per_section: bool = False,
                    locations=None, stain_norm: str = defaults.STAIN_NORM, key_added: str = "spatial_domain",
                    library_key: str = LIBRARY_KEY, copy: bool = False):
    """Spatial domains (the ``cluster`` command): each section's spot features smoothed over its spot graph, then
    all spots clustered together, so a domain means the same in every section.

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``.
    features
        ``"colour_texture"`` (colour/texture of the spot's patch and a twice wider one, z-scored per section: the
        default, which clustered the HER2ST sections closer to their reference regions than ``"image"`` did,
        BENCHMARKS.md), ``"image"`` (the same with the encoder's embeddings of both patches), ``"expression"``
        (observed counts of highly variable ``genes``, z-scored per section) or ``"predicted"``
        (``expression_model``'s prediction).
    encoder
        Encoder name, model folder or Encoder, for ``features="image"`` (see ``sf.tl.embed``).
    expression_model
        An ExpressionModel, for ``features="predicted"``.
    genes
        Genes of ``features="expression"`` (``"hvg:K"``, a list, ...).
    method
        ``"kmeans"`` or ``"leiden"``.
    n_clusters
        Number of domains (Leiden: its resolution found by bisection).
    resolution
        Leiden resolution, instead of ``n_clusters``.
    smooth
        Weight of the neighbours' mean in each spot's smoothed features (0: none).
    radius_um
        Neighbour radius (default 1.5 x the nearest-spot distance).
    seed
        Random seed of the clustering.
    sections
        The sections to cluster together (default: all of ``data``).
    per_section
        Cluster each section on its own instead (its domains mean nothing in another section); the features are
        still made over all of them (``features="expression"``: the same genes).
    locations
        A mapping of section -> AnnData of other points of that section (a tissue grid:
        ``tasks.spot_features.locations_adata``), smoothed over their own graph and each given the nearest domain
        in its ``obs[key_added]``; colour/texture, image or predicted features only.
    stain_norm
        ``"none"``, ``"macenko"`` or ``"reinhard"`` (colour/texture and image features): every section's patches
        mapped to one stain reference fitted over tissue patches of all the clustered sections (``io/stain.py``).
    key_added
        Column of ``obs`` for the domains.
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    copy
        Work on a copy and return it, instead of writing into ``data``.

    Returns
    -------
    None, or a copy of ``data`` with ``copy=True``. Writes ``obs[key_added]`` (categorical, the same categories in
    every section unless ``per_section``), ``uns['spafoundation_clustering']`` (the parameters), and, in each section's own AnnData (a
    mapping's, or an AnnData of one section), ``obsp['spatial_connectivities']`` / ``obsp['spatial_distances']``,
    the spot graph it was smoothed over.
    """
    from spafoundation.tasks.clustering import domain_features, spatial_clusters

    data = copy_data(data) if copy else data
    split = Sections(data, library_key, images=features != "expression", counts=True)
    chosen = split.select(sections)
    locations = locations or {}
    feats, location_feats, blocks = domain_features(
        chosen, features, encoder=encoder_for(encoder) if features == "image" else None,
        expression_model=expression_model, genes=genes, locations=locations, cache_dir=cache_dir(),
        progress=progress(), stain_norm=stain_norm)
    for group in ([{n: a} for n, a in chosen.items()] if per_section else [chosen]):
        spatial_clusters(group, {n: feats[n] for n in group}, method=method, n_clusters=n_clusters,
                         resolution=resolution, smooth_weight=smooth, radius_um=radius_um, seed=seed, key=key_added,
                         grids={n: locations[n] for n in group if n in locations} or None,
                         grid_features=location_feats, blocks=blocks)
    split.set_obs(key_added, {n: a.obs[key_added] for n, a in chosen.items()})
    params = {"features": features, "method": method, "n_clusters": n_clusters, "resolution": resolution,
              "smooth": smooth, "radius_um": radius_um, "seed": seed, "per_section": per_section,
              "stain_norm": stain_norm, "key_added": key_added}
    split.set_uns(UNS_KEY, {n: params for n in chosen})
    return data if copy else None
