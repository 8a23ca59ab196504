"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import contextlib

from spafoundation.errors import InputError


def _number(kind, ok, wanted: str):
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else the usage error 'must be <wanted>'."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
unit_interval = _number(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def parse_sections(text: str | None) -> list[str] | None:
    """``"C2,C3"`` -> ``["C2", "C3"]``; empty or None -> every section."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return names or None


def parse_target_sum(text: str) -> float | None:
    """``--target-sum``: a positive number (counts per spot after scaling) or ``none`` (log1p of raw counts)."""
    if str(text).lower() in ("none", "raw", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(None, "--target-sum", f"expected a number or 'none', got {text!r}") from None
    if value <= 0:
        raise InputError(None, "--target-sum", "must be positive (or 'none' for log1p of raw counts)")
    return value


def add_cache_args(p) -> None:
    p.add_argument("--cache-dir", help="embedding cache (default $SPAFOUNDATION_CACHE or ~/.cache/spafoundation)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cache_dir(args):
    return False if args.no_cache else args.cache_dir


@contextlib.contextmanager
def api_settings(args):
    """``sf.settings`` for the ``sf.tl`` calls of one command: its cache (``--cache-dir``, ``--no-cache``) and
    progress bars (``--quiet``), put back afterwards. A ``--cache-dir`` that is a file is refused here, under its
    own name, as the task code would name it."""
    from spafoundation._settings import settings
    from spafoundation.models.cache import cache_root

    changes = {"progress": not args.quiet}
    if args.no_cache:
        changes["cache_dir"] = False
    elif args.cache_dir:
        changes["cache_dir"] = cache_root(args.cache_dir)
    with settings.override(**changes):
        yield


def add_precision_option(p) -> None:
    """``--precision`` for commands that build encoders through the pipeline (utils/precision.py); cli.main applies
    it for the one command."""
    from spafoundation.utils.precision import CHOICES

    p.add_argument("--precision", dest="pipeline_precision", choices=CHOICES,
                   help="encoder precision: int8 = dynamically quantised Linear layers on CPU (the default there: "
                        "fastest at unchanged accuracy, BENCHMARKS.md), fp32 to opt out; bf16/fp16 autocast on GPU. "
                        "A fitted model otherwise reuses the precision it was fitted with")


def precision_note() -> str:
    """A sentence for a benchmark's markdown: the precision its encoders ran at (they run on CPU)."""
    from spafoundation.utils.precision import REFERENCE, chosen_precision, default_precision

    chosen = chosen_precision()
    if chosen == REFERENCE:
        why = ("the reference for accuracy tables, every baseline at its best; the CPU default, int8, is checked "
               "against it under 'CPU fast path'")
    else:
        why = "chosen with --precision" if chosen else "the pipeline's default on CPU"
    return f"Encoders at {default_precision('cpu') or 'their own'} precision ({why}). "


def add_data_options(p) -> None:
    """Reader options for commands that read a dataset."""
    p.add_argument("--bin-um", type=float, metavar="UM",
                   help="Visium HD: spot size in microns, a bin size Space Ranger wrote or a multiple of one (bins "
                        "summed into k x k blocks); default its 16 um bins. Xenium (cells): the side of the squares "
                        "the cells are summed into, default 55 um")
    p.add_argument("--image", metavar="PATH",
                   help="the full-resolution H&E of one Space Ranger sample (Visium or HD), of a Xenium folder "
                        "(its alignment CSV beside it), of a one-library .h5ad or of a table of spots, when it is not "
                        "in the sample folder (spatial/ holds only Space "
                        "Ranger's thumbnails; without one, its hires PNG is used)")
    p.add_argument("--image-scale", type=positive_float, metavar="S",
                   help="--image is a downscaled copy: its px per full-resolution px of the spot coordinates (Space "
                        "Ranger's tissue_hires_scalef for its hires PNG, taken from scalefactors_json.json when "
                        "--image is that file); patches are cut at the same microns and upsampled")
    p.add_argument("--mpp", type=positive_float, metavar="UM",
                   help="microns per pixel of the full-resolution images, over what the data says (with --tiles: "
                        "for slides whose metadata lacks it)")


def data_options(args) -> dict:
    """The keyword arguments of ``read_dataset`` that ``add_data_options`` collected."""
    from spafoundation.io.readers import data_options as read_options

    return read_options(args)


def command_dataset(args, data: dict | None, sections: list[str] | None, *, with_images: bool = True,
                    imaged_only: bool = False) -> dict:
    """The sections a command works on: read from ``args.data``, or, when ``run`` read the dataset once for all its
    steps, copies of those in ``data`` (each step gets fresh objects, as if it had read them itself).
    ``with_images=False``: without the H&E thumbnails, as ``read_dataset`` gives them (the copies drop theirs).
    ``imaged_only``: the sections without an H&E image left out (and named in one log line), unread where the
    layout allows (``read_dataset``)."""
    from spafoundation.io.anndata_spec import without_thumbnail
    from spafoundation.io.readers import drop_imageless, read_dataset, select_sections

    if data is None:
        return read_dataset(args.data, sections, with_images=with_images, imaged_only=imaged_only,
                            **data_options(args))
    chosen = select_sections(data, sections, args.data)
    if imaged_only:
        chosen = drop_imageless(chosen, args.data)
    return {n: a.copy() if with_images else without_thumbnail(a) for n, a in chosen.items()}


def imaged_sections(data: dict, data_path, purpose: str = "") -> dict:
    """The sections of ``data`` that have an H&E image; none: an InputError saying how to give one."""
    from spafoundation.io.anndata_spec import image_path

    imaged = {n: a for n, a in data.items() if image_path(a)}
    if not imaged:
        raise InputError(data_path, "image", f"no selected section has an H&E image{' ' + purpose if purpose else ''}"
                         " (a Space Ranger sample's full-resolution H&E goes in its folder or is given with --image; "
                         "a manifest names each section's image)")
    return imaged


OUTPUT_FORMATS = ("h5ad", "spatialdata")


def add_format_option(p, store: str) -> None:
    """``--format``: results as .h5ad files (default) or as one SpatialData store, ``store`` (io/spatialdata_write.py),
    that opens over the H&E in napari-spatialdata and spatialdata-plot."""
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="h5ad",
                   help=f"h5ad (default) or spatialdata: one zarr store ({store}) with the H&E, the spots as circles "
                        "and the results as tables; needs pip install 'spafoundation[spatialdata]'")


def check_format_available(args) -> None:
    """With ``--format spatialdata``, an InputError before any work when the optional extra is missing."""
    if getattr(args, "format", "h5ad") == "spatialdata":
        from spafoundation.io.spatialdata import require_spatialdata

        require_spatialdata(None, "--format")


STAIN_NORM_HELP = (
    "normalise every patch's stain to a reference before features are computed: macenko (stain vectors in optical "
    "density) or reinhard (Lab colour statistics); each section's own stain is estimated over a sample of its "
    "tissue patches. Default none: on HER2ST leave-one-patient-out (hvg:50) the default pipeline scored mean r "
    "0.075 without, 0.066 with macenko and 0.070 with reinhard (README, 'Stain normalisation')")


def add_stain_option(p, fitted: bool = False, where: str | None = None) -> None:
    """``--stain-norm``; where the command fits no reference of its own (``fitted`` False), ``--stain-reference``
    too. ``where``: how the command chooses its reference, for the help."""
    from spafoundation import defaults

    where = where or ("the reference is fitted over tissue patches of the training sections and saved in the model, "
                      "so predict-expression maps new sections to it" if fitted else
                      "the reference is --stain-reference, else the built-in one (HER2ST patient C)")
    p.add_argument("--stain-norm", choices=defaults.STAIN_NORM_METHODS, default=defaults.STAIN_NORM,
                   help=f"{STAIN_NORM_HELP}; {where}")
    if not fitted:
        p.add_argument("--stain-reference", metavar="IMAGE",
                       help="an H&E image (a region with the look to match) to fit the --stain-norm reference on")


def stain_reference(args):
    """The ``StainReference`` of ``--stain-norm`` / ``--stain-reference`` (None for none)."""
    from spafoundation.io.stain import builtin_reference, reference_from_image

    method = getattr(args, "stain_norm", "none")
    image = getattr(args, "stain_reference", None)
    if method == "none":
        if image:
            raise InputError(image, "--stain-reference", "needs --stain-norm macenko or reinhard")
        return None
    return reference_from_image(image, method) if image else builtin_reference(method)


def add_random_seeds_option(p, rows: str) -> None:
    """``--random-seeds`` of a benchmark; ``rows``: which random-init rows it seeds."""
    p.add_argument("--random-seeds", type=positive_int, default=1,
                   help=f"score the random-init encoder ({rows}) at this many seeds of its weights and report their "
                        "mean and range (default 1: its registered seed; one draw is a noisy baseline)")


def check_random_seeds(args) -> None:
    """Before any data is read: seeds are drawn only for a random-init encoder."""
    if args.random_seeds > 1 and not args.random_encoder.startswith("random-"):
        raise InputError(None, "--random-seeds", f"draws seeds of a random-init encoder (random-*), and "
                         f"{args.random_encoder!r} has fixed weights")


def spread_note(spread) -> str:
    """A line per seeded contender (``eval.expression_benchmark.seed_spread``, of whichever metric): how far its
    single seeds range in each split."""
    metric = next((c[len("min_"):] for c in spread.columns if c.startswith("min_")), None)
    lines = [f"{c}: single seeds range " + "; ".join(
        f"{r.direction} {getattr(r, 'min_' + metric):.3f}-{getattr(r, 'max_' + metric):.3f} "
        f"(sd {getattr(r, 'sd_' + metric):.3f})" for r in g.itertuples()) for c, g in spread.groupby("contender",
                                                                                                    sort=False)]
    return "".join(f"\n\n{line}" for line in lines)
