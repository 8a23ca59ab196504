"""``sf.tl.embed``: one embedding per spot from its H&E patch."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections, copy_data
from spafoundation.tl._common import cache_dir, encoder_for, progress


def embed(data, encoder=defaults.ENCODER, *, library_key: str = LIBRARY_KEY, key_added: str | None = None,
          tta: bool = False, batch_size: int = 64, stain_norm: str = defaults.STAIN_NORM, stain_reference=None,
          copy: bool = False):
    """Embed every spot's H&E patch (``encoder.patch_um`` microns around its centre) with an encoder.

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData (``sf.read``); an AnnData of several sections tells them
        apart by ``obs[library_key]``. Every section needs its H&E image.
    encoder
        A registered name (``spafoundation.models.list_encoders()``), ``timm:<arch>``, ``hf-hub:<repo>``, a model
        folder, or an Encoder. Built on ``sf.settings.device`` at ``sf.settings.precision``.
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    key_added
        Key in ``obsm``; default ``X_<encoder name>``.
    tta
        Average the embeddings of the 8 rotations and flips of each patch.
    batch_size
        Patches per forward pass.
    stain_norm
        ``"none"`` (default), ``"macenko"`` or ``"reinhard"``: each patch's stain normalised to ``stain_reference``
        first (each section's own stain estimated over a sample of its tissue patches; ``io/stain.py``).
    stain_reference
        What ``stain_norm`` maps to: a ``StainReference`` (``spafoundation.io.stain``), an image file to fit one on,
        or None for the built-in reference (fitted on HER2ST patient C's scans).
    copy
        Work on a copy and return it, instead of writing into ``data``.

    Returns
    -------
    None, or a copy of ``data`` with ``copy=True``. Writes

    - ``obsm[key_added]``: float32 (n_spots, embed_dim);
    - ``obs['tissue_fraction']``: share of tissue pixels in each patch (glass masked to black is
      none), ``obs['low_tissue']`` below 0.1;
    - ``uns['spafoundation_embeddings'][key_added]``: encoder identity, patch size, cache status (in an AnnData of
      several sections, ``uns['spafoundation_embeddings'][section]``).

    Embeddings are cached on disk (``sf.settings.cache_dir``), so a second call is a read.
    """
    from spafoundation.models.embed import UNS_KEY, embed_adata

    data = copy_data(data) if copy else data
    sections = Sections(data, library_key, images=True)
    stain = _stain(stain_norm, stain_reference)
    enc = encoder_for(encoder)
    key = key_added or f"X_{enc.name}"
    embeddings = {n: embed_adata(a, enc, cache_dir=cache_dir(), tta=tta, batch_size=batch_size, progress=progress(),
                                 key=key, stain=stain) for n, a in sections.by_name.items()}
    if not sections.one:
        sections.set_obsm(key, embeddings)
        for column in ("tissue_fraction", "low_tissue"):
            sections.set_obs(column, {n: a.obs[column].to_numpy() for n, a in sections.by_name.items()})
        sections.set_uns(UNS_KEY, {n: a.uns[UNS_KEY] for n, a in sections.by_name.items()})
    return data if copy else None


def _stain(method: str, reference):
    """The ``StainReference`` of ``stain_norm`` / ``stain_reference`` (None for ``"none"``)."""
    from spafoundation.io.stain import StainReference, builtin_reference, check_method, reference_from_image

    check_method(method, None, "stain_norm")
    if method == "none":
        if reference is not None:
            raise ValueError("stain_reference needs stain_norm='macenko' or 'reinhard'")
        return None
    if reference is None:
        return builtin_reference(method)
    if isinstance(reference, StainReference):
        if reference.method != method:
            raise ValueError(f"stain_reference is a {reference.method} reference, but stain_norm is {method!r}")
        return reference
    return reference_from_image(reference, method)
