"""``spafoundation benchmark tumor DATA --out DIR``: tumour detection on held-out patients and sections, every
route in one run."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_precision_option,
    add_random_seeds_option,
    cache_dir,
    check_random_seeds,
    data_options,
    parse_sections,
    precision_note,
    spread_note,
)
from spafoundation.errors import InputError

LABEL_COLUMNS = "label,cluster_annotation"
# What the label columns of HER2ST-like data hold, said beside the table when a section is labelled by them.
KNOWN_SOURCES = {"label": "the pathologist's annotations of the spots",
                 "cluster_annotation": "the authors' annotations of expression clusters: labels that come from "
                                       "expression, not from a pathologist"}


def labels_note(sources: dict[str, str], columns: list[str], positive: str) -> str:
    """The header's text on labels: the columns in order of preference, which column labels which sections."""
    by_column = {c: [n for n, s in sources.items() if s == c] for c in dict.fromkeys(sources.values())}
    used = "; ".join(f"obs['{c}'] for {', '.join(names)}" for c, names in by_column.items())
    known = " ".join(f"On HER2ST obs['{c}'] holds {KNOWN_SOURCES[c]}." for c in by_column if c in KNOWN_SOURCES)
    return (f"Labels: per section, the first of {', '.join(f'obs[{c!r}]' for c in columns)} (--label-column, in "
            f"order of preference) that it has with known values: {used}. A label matching /{positive}/ "
            "(case-insensitive) is tumour, any other not; unknown spots (e.g. 'undetermined') are left out. "
            + (known + " " if known else "")
            + "Supervised contenders train on the training sections' labels; the label-free marker route trains on "
            "their counts only, and labels only score it.")


def run(args) -> int:
    from spafoundation.eval.expression_benchmark import seed_spread
    from spafoundation.eval.splits import LOPO, LOSO, benchmark_splits
    from spafoundation.eval.tumor_benchmark import (
        run_tumor_benchmark,
        summarize_tumor,
        tumor_contenders,
        tumor_markdown,
    )
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.tasks.expression import DEFAULT_ENCODER
    from spafoundation.tasks.labels import label_columns, label_source
    from spafoundation.utils.atomic import atomic_path

    check_random_seeds(args)
    columns = label_columns(args.label_column)
    if not columns:
        raise InputError(None, "--label-column", "name at least one label column")
    data = read_dataset(args.data, parse_sections(args.sections), **data_options(args))
    sources = {n: label_source(a, columns) for n, a in data.items() if image_path(a) and a.n_vars > 0}
    usable = {n: data[n] for n, s in sources.items() if s is not None}
    sources = {n: sources[n] for n in usable}
    splits = benchmark_splits(usable)
    if len(usable) < 2 or not splits:
        raise InputError(args.data, " / ".join(f"obs['{c}']" for c in columns),
                         "the benchmark needs at least two imaged sections with counts and known labels in one "
                         "of these columns (and two of one patient, or two patients)")
    contenders = tumor_contenders(args.default_encoder or DEFAULT_ENCODER, args.random_encoder, args.random_seeds)
    t0 = time.perf_counter()
    rows = run_tumor_benchmark(usable, contenders, label_column=columns, positive=args.positive,
                               cache_dir=cache_dir(args), progress=not args.quiet)
    summary = summarize_tumor(rows, contenders)
    out = Path(args.out)
    with atomic_path(out / "tumor_per_section.csv") as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_path(out / "tumor_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    table = tumor_markdown(summary) + spread_note(seed_spread(rows, contenders, "roc_auc"))
    kinds = [k for k in (LOPO, LOSO) if any(s[0] == k for s in splits)]
    patients = sorted({d.split(" -> ")[1] for k, d, _, _ in splits if k == LOPO})
    about = {LOPO: f"{LOPO} (the headline: each of patients {', '.join(patients)} scored by models trained on the "
                   "other patients' sections; one row per direction, then their mean, each direction weighing the "
                   "same)",
             LOSO: f"{LOSO} within each patient (trained on the patient's other sections)"}
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    md = (f"Command: `{command}`\n\n{precision_note()}Sections: {', '.join(usable)}; splits: "
          f"{'; '.join(about[k] for k in kinds)}.\n{labels_note(sources, columns, args.positive)}\n"
          "Metrics: ROC AUC and PR AUC per test section, averaged over the test sections of a row.\n\n"
          f"{table}\n\n{time.perf_counter() - t0:.0f} s on this machine.\n")
    with atomic_path(out / "tumor_benchmark.md") as tmp:
        Path(tmp).write_text(md)
    print(table)
    print(f"\nwrote {out}/tumor_benchmark.md, tumor_summary.csv and tumor_per_section.csv")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tumor", help="held-out-patient and held-out-section benchmark of tumour detection",
                              description="Tumour detection on held-out patients (leave-one-patient-out, the "
                              "headline, when two or more patients are present) and held-out sections within each "
                              "patient, every route in one run. Each section is labelled by the first of "
                              "--label-column it has, so patients labelled differently can train and score each "
                              "other.")
    p.add_argument("data", help="dataset with at least two imaged, labelled sections with counts")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections")
    p.add_argument("--label-column", default=LABEL_COLUMNS,
                   help="obs columns of the labels, comma-separated in order of preference: each section is "
                   "labelled by the first one it has with known values, sections with none are left out (default: "
                   f"{LABEL_COLUMNS}: on HER2ST the pathologist's labels where a section has them, else the "
                   "annotations of expression clusters)")
    p.add_argument("--positive", default=r"cancer|tumou?r|carcinoma|malignan", help="regex of tumour labels")
    p.add_argument("--default-encoder", help="the encoder of the pipeline (default: the shipped one)")
    p.add_argument("--random-encoder", default="random-vitt16", help="the random-init baseline")
    add_random_seeds_option(p, "+ logistic, and in the default route; ROC AUC")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
