"""``spafoundation fit-expression DATA --sections C2,C3 --out MODEL_DIR``: learn expression from H&E."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_precision_option,
    add_stain_option,
    api_settings,
    command_dataset,
    non_negative_float,
    non_negative_int,
    parse_sections,
    parse_target_sum,
    positive_float,
    positive_int,
)
from spafoundation.errors import InputError


def check_programs_head(head: str, programs: int | None, path=None, field: str = "--programs") -> None:
    """Shared expression programs are a setting of the ridge-ensemble head only."""
    if programs is not None and head != "ridge-ensemble":
        raise InputError(path, field, f"shared expression programs belong to the ridge-ensemble head, not {head}")


def reference_sections(args) -> dict | None:
    """The sections with counts of ``--reference`` (those of ``--reference-sections``), checked before the work."""
    from spafoundation.io.readers import read_dataset
    from spafoundation.tasks.expression_reference import check_reference_head

    if args.reference is None:
        if args.reference_sections:
            raise InputError(None, "--reference-sections", "names sections of --reference, which is not given")
        return None
    check_reference_head(args.head, args.programs, field="--reference")
    sections = read_dataset(args.reference, parse_sections(args.reference_sections))
    with_counts = {n: a for n, a in sections.items() if a.n_vars > 0}
    if not with_counts:
        raise InputError(args.reference, "counts", "no reference section has counts")
    return with_counts


def reference_hint(data_path, trained: list[str]) -> str | None:
    """A line naming the sections of the dataset that have counts but no image, which ``--reference`` could use."""
    from spafoundation.io.readers import imageless_sections

    names = [n for n in imageless_sections(data_path) if n not in trained]
    if not names:
        return None
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"{len(names)} section(s) of {data_path} have counts but no H&E image ({shown}): `--reference "
            f"{data_path}` lets their counts shape the head's shared expression axes (README, 'Reference sections'; "
            "--reference-sections picks which: leave out any section you will score)")


def run(args, data: dict | None = None) -> int:
    from spafoundation import tl
    from spafoundation._settings import settings
    from spafoundation.utils.atomic import check_output_dir

    check_output_dir(args.out)  # before the work: never replace a folder of the user's
    sections = parse_sections(args.sections)
    # without --sections: every section with an image (one named without is an error: it cannot train)
    data = command_dataset(args, data, sections, imaged_only=sections is None)
    train = {n: a for n, a in data.items() if a.n_vars > 0}
    if not train:
        raise InputError(args.data, "counts", "no selected section has counts to train on")
    head_params = {}
    if args.epochs:
        head_params["max_epochs" if args.head == "mlp" else "epochs"] = args.epochs
    if args.lr:
        head_params["lr"] = args.lr
    check_programs_head(args.head, args.programs)
    if args.programs is not None:
        head_params["programs"] = args.programs
    reference = reference_sections(args)
    with api_settings(args), settings.override(device=args.device):
        model = tl.fit_expression(
            train, args.encoder, genes=args.genes, head=args.head, target_sum=parse_target_sum(args.target_sum),
            head_params=head_params or None, source=args.features, tta=args.tta or None, context=args.context,
            neighbours_um=args.neighbours_um, standardize=args.standardize, stain_norm=args.stain_norm,
            reference=reference,
        )
    model.save(args.out)
    t = model.training
    shown = {k: v for k, v in model.recipe.items() if k != "stain_reference"}  # its numbers are in config.json
    print(f"fitted {args.head} head on {len(t['sections'])} section(s) ({', '.join(t['sections'])}), "
          f"{t['n_spots']} spots, {len(model.genes)} genes; features {shown}")
    if t.get("reference"):
        r = t["reference"]
        print(f"expression programs also from {len(r['sections'])} reference section(s) of patient(s) "
              f"{', '.join(r['patients'])} ({r['n_spots']} spots, counts only)")
    if reference is None and (hint := reference_hint(args.data, t["sections"])):
        print(hint)
    if t.get("cv_mean_r") is not None:
        print(f"inner cross-validation over training sections: mean per-gene r {t['cv_mean_r']:.3f}")
    if (line := model.reliability_summary()) is not None:
        print(line)
    print(f"wrote {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("fit-expression", help="fit a model of spot gene expression from H&E patches")
    p.add_argument("data", help="dataset folder (legacy ST, Space Ranger outs/, HEST), manifest or .h5ad")
    add_data_options(p)
    p.add_argument("--sections", help="comma-separated training sections (default: all with counts and images)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--encoder", default=defaults.ENCODER,
                   help="encoder name or model folder (default: the shipped checkpoint)")
    p.add_argument("--genes", default=defaults.EXPRESSION_GENES,
                   help="hvg:K (seurat flavour, training sections only), mean:K, or a gene-list file (.npy/.txt)")
    p.add_argument("--head", default=defaults.EXPRESSION_HEAD,
                   choices=["ridge-ensemble", "ridge", "mlp", "finetune", "mean"],
                   help="ridge-ensemble (default): the mean of two ridges, one on every feature block and one on "
                        "the spot patch's colour/texture and nuclei alone, which carry best to another patient, plus "
                        "the shared expression programs (--programs); ridge: "
                        "scaling + PCA-256 + ridge, alpha by cross-validation over sections; mlp: one hidden "
                        "layer; finetune: the whole encoder + LayerNorm/Linear on the class token, MSE (the "
                        "authors' protocol, meant for a GPU); mean: the training-mean baseline")
    p.add_argument("--programs", type=non_negative_int,
                   help="ridge-ensemble: how many shared expression programs (the leading axes along which the "
                        "training genes vary together, predicted from every feature block) to add to each gene's "
                        "prediction (default 2; 0 = off)")
    p.add_argument("--reference",
                   help="ridge-ensemble: a dataset (any format DATA may be) whose sections' counts, images not "
                        "needed, also inform the shared expression programs, e.g. other patients of the cohort or a "
                        "public atlas of the same tissue; it never predicts them")
    p.add_argument("--reference-sections", help="comma-separated sections of --reference (default: all with counts)")
    p.add_argument("--epochs", type=positive_int, help="epochs of the finetune head (default 20) / maximum for mlp")
    p.add_argument("--lr", type=positive_float, help="learning rate of the mlp / finetune head")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (cpu, cuda, mps)")
    p.add_argument("--target-sum", default=str(defaults.TARGET_SUM),
                   help="targets are log1p(counts / library size * target-sum); 'none' for log1p of raw counts")
    p.add_argument("--features", help="feature source: encoder, colour_texture, nuclei, mean_colour, or joined "
                                      "with '+' (default encoder+colour_texture+nuclei)")
    p.add_argument("--tta", action="store_true", help="average embeddings over the 8 rotations/flips")
    p.add_argument("--context", type=positive_float,
                   help="also embed a patch this many times wider (default 2; 1 = off)")
    p.add_argument("--neighbours-um", type=non_negative_float,
                   help="also average features over spots within this radius (default 300; 0 = off)")
    p.add_argument("--standardize", choices=["section", "none"],
                   help="section (default): z-score every feature within each section, removing stain and scanner "
                        "offsets between slides; none: raw feature values")
    add_stain_option(p, fitted=True)
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
