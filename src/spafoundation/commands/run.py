"""``spafoundation run --data DATA --out DIR``: the whole analysis in one command, then an HTML report.

The plan is a list of typed step configs (commands/_run_steps.py), made from the config and checked before any step
runs: expression (fit on the sections with counts, predict the others), super-resolution, tumour map, spatial
domains, then the report. Each step runs in this process as its command's function on the dataset read once (each
step gets its own copy of the sections); ``--dry-run`` prints each as the command line that writes the same outputs.
Where each step writes is ``RunFolder``, which the report reads too. A finished step leaves a marker with its command
line and its input files' fingerprints in ``DIR/.steps``; a rerun skips it while both are unchanged (an interrupted
run continues from what was complete) and redoes it, saying why, when an input file or an option changed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from spafoundation import defaults
from spafoundation.commands._common import (
    add_data_options,
    add_format_option,
    add_precision_option,
    check_format_available,
    imaged_sections,
)
from spafoundation.commands._run_steps import (
    ClusterStep,
    FitExpressionStep,
    PredictExpressionStep,
    RunStep,
    SuperresStep,
    TumorStep,
)
from spafoundation.errors import InputError
from spafoundation.run_folder import RunFolder
from spafoundation.utils.atomic import atomic_path, check_output_dir
from spafoundation.utils.precision import CHOICES

DEFAULTS: dict = {
    "data": None,  # or --data
    "sections": None,  # all sections of the dataset
    "bin_um": None,  # Visium HD: spot size in microns (io/visium_hd.py); or --bin-um
    "image": None,  # the H&E of one Space Ranger sample (or one-library .h5ad) kept elsewhere; or --image
    "image_scale": None,  # image px per full-resolution px when that image is a downscaled copy; or --image-scale
    "mpp": None,  # microns per pixel of the images, over what the data says; or --mpp
    "encoder": defaults.ENCODER,
    "precision": None,  # default: int8 on CPU (utils/precision.py); fp32 to opt out
    "cache_dir": None,  # default: DIR/cache
    "stain_norm": defaults.STAIN_NORM,  # none, macenko or reinhard: fit-expression, tumor and cluster (io/stain.py)
    "expression": {"enabled": True, "model": None, "train_sections": None, "predict_sections": None,
                   "genes": defaults.EXPRESSION_GENES, "head": defaults.EXPRESSION_HEAD,
                   # ridge-ensemble's shared expression programs (None: its default, 2); a dataset whose sections'
                   # counts also inform them (fit-expression --reference)
                   "programs": None, "reference": None, "reference_sections": None},
    "superres": {"enabled": True, "step_um": None, "genes": defaults.SUPERRES_GENES},
    "tumor": {"enabled": True, "route": None, "label_column": None, "markers": None,
              "grid_um": defaults.TUMOR_GRID_UM},
    "clusters": {"enabled": True, "features": defaults.DOMAIN_FEATURES, "method": defaults.DOMAIN_METHOD,
                 "n_clusters": defaults.N_DOMAINS, "smooth": defaults.DOMAIN_SMOOTH, "reference_column": None,
                 "grid_um": defaults.DOMAIN_GRID_UM},
    "report": {"enabled": True, "top_genes": defaults.REPORT_TOP_GENES},
}


def check_value_types(cfg: dict, config_path) -> None:
    """The values no step's command parses, checked before anything runs: the report's gene count, the encoder and
    cache names, the steps' on/off switches (a value a step's command parses is checked as it parses it, by
    ``check_step_arguments``)."""
    from spafoundation.utils.config_types import check_value_types as check_against_defaults

    check_against_defaults(cfg, DEFAULTS, config_path, allow_none=True)
    if cfg["report"]["top_genes"] is None or cfg["report"]["top_genes"] < 1:
        raise InputError(config_path, "report.top_genes", f"must be >= 1, got {cfg['report']['top_genes']!r}")
    for key, wanted in (("encoder", "an encoder name or model folder"), ("cache_dir", "a folder")):
        value = cfg[key]
        if (value is not None or key == "encoder") and (not isinstance(value, str) or not value.strip()):
            raise InputError(config_path, key, f"must be {wanted}, got {value!r}")
    from spafoundation.commands.fit_expression import check_programs_head

    check_programs_head(cfg["expression"]["head"], cfg["expression"]["programs"], config_path, "expression.programs")
    if cfg["expression"]["reference"] is not None:
        from spafoundation.tasks.expression_reference import check_reference_head

        check_reference_head(cfg["expression"]["head"], cfg["expression"]["programs"], config_path,
                             "expression.reference")
    if cfg["stain_norm"] not in defaults.STAIN_NORM_METHODS:
        raise InputError(config_path, "stain_norm", f"must be one of {', '.join(defaults.STAIN_NORM_METHODS)}, got "
                         f"{cfg['stain_norm']!r}")


def _names(value) -> list[str] | None:
    if value is None or value == "":
        return None
    return [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if str(s).strip()]


def expression_split(data: dict, cfg: dict) -> tuple[list[str], list[str]]:
    """(train, predict) sections: training needs counts and an image; by default the imaged sections without counts
    are predicted, and when every imaged section has counts the last one is held out, so the run shows how well
    expression is predicted on a section the model never saw."""
    from spafoundation.io.anndata_spec import image_path

    imaged = [n for n, a in data.items() if image_path(a)]
    with_counts = [n for n in imaged if data[n].n_vars > 0]
    predict = _names(cfg["predict_sections"])
    train = _names(cfg["train_sections"])
    for name, group in (("expression.predict_sections", predict), ("expression.train_sections", train)):
        for s in group or []:
            if s not in imaged:
                raise InputError(None, name, f"section {s} is not an imaged section of the dataset")
    if predict is None:
        predict = [n for n in imaged if n not in with_counts]
        if not predict and len(with_counts) >= 2 and not train:
            predict = [with_counts[-1]]
    if train is None:
        train = [n for n in with_counts if n not in predict]
    bad = [s for s in train if s not in with_counts]
    if bad:
        raise InputError(None, "expression.train_sections", f"sections {', '.join(bad)} have no counts")
    return train, predict


def check_inputs(data: dict, cfg: dict) -> None:
    """What would otherwise fail half-way through the run, checked before anything is written: tissue on every
    image, a gene selection that the training sections can satisfy, and the label columns the config names."""
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.patches import section_tissue
    from spafoundation.pp.genes import TARGET_SUM, select_genes

    for n, a in data.items():
        if image_path(a) and not section_tissue(a)[0].any():
            raise InputError(image_path(a), "image", f"section {n}: no tissue found on the image")
    e = cfg["expression"]
    if e["enabled"] and e["model"] is None:
        train, _ = expression_split(data, e)
        if train:
            select_genes([data[n] for n in train], e["genes"], TARGET_SUM)
    from spafoundation.tasks.tumor import tumor_routes

    imaged = [a for a in data.values() if image_path(a)]
    t = cfg["tumor"]
    columns = {"tumor.label_column": t["enabled"] and "supervised" in tumor_routes(t["route"], bool(t["label_column"]))
               and t["label_column"],
               "clusters.reference_column": cfg["clusters"]["enabled"] and cfg["clusters"]["reference_column"]}
    for key, col in columns.items():
        if col and not any(col in a.obs and a.obs[col].notna().any() for a in imaged):
            raise InputError(None, key, f"no imaged section has values in obs['{col}']")


_NO_COUNTS = "left out: no imaged section has counts to train on"
_NO_MARKERS = ("no marker gene (tumor.markers, default HER2+ breast cancer's) is measured in every imaged section "
               "with counts")


def _tumor_markers_usable(data: dict, step: TumorStep) -> bool:
    """Whether the tumour step's label-free route, when its settings lead to it, has marker genes to train on (the
    supervised route alone, from labels, needs none)."""
    from spafoundation.tasks.tumor import marker_list, marker_training, tumor_routes

    if "markers" not in tumor_routes(step.route, labelled=bool(step.label_column)):
        return True
    return bool(marker_training({n: data[n] for n in step.train_sections}, marker_list(step.markers))[1])


def plan(data_path: str, out: Path, cfg: dict, data: dict, notes: list[str] | None = None) -> list[RunStep]:
    """The steps of the run, as typed step configs (checked as they are made: a value a step's command would refuse
    is an InputError now, before any step runs); ``notes`` collects what was left out and why."""
    notes = [] if notes is None else notes
    folder = RunFolder(out)
    imaged = list(imaged_sections(data, data_path))
    common = {"data": data_path, "cache_dir": str(cfg["cache_dir"] or folder.cache),
              "pipeline_precision": cfg["precision"], **{k: cfg[k] for k in ("bin_um", "image", "image_scale", "mpp")}}
    stain = cfg["stain_norm"] if cfg["stain_norm"] != defaults.STAIN_NORM else None  # the default prints nothing
    steps: list[RunStep] = []
    e = cfg["expression"]
    if e["enabled"]:
        train, predict = expression_split(data, e)
        model = e["model"]
        if model is None and not train:
            notes.append(f"expression {_NO_COUNTS} (or give expression.model, a fitted model folder)")
        if model is None and train:
            model = str(folder.expression_model)
            steps.append(FitExpressionStep(**common, sections=train, out=folder.expression_model, genes=e["genes"],
                                           head=e["head"], programs=e["programs"], reference=e["reference"],
                                           reference_sections=e["reference_sections"], encoder=cfg["encoder"],
                                           stain_norm=stain))
        if model is not None and predict:
            steps.append(PredictExpressionStep(**common, model=model, sections=predict, out=folder.predicted))
    r = cfg["superres"]
    if r["enabled"]:
        train = expression_split(data, e)[0] if e["enabled"] else [n for n in imaged if data[n].n_vars > 0]
        if not train:
            notes.append(f"super-resolution {_NO_COUNTS}")
        if train:  # checked as a step before its values are used here
            superres = SuperresStep(**common, sections=imaged, train_sections=train, out=folder.superres,
                                    genes=r["genes"], encoder=cfg["encoder"], step_um=r["step_um"] or None)
            from spafoundation.tasks.expression import resolve_encoder
            from spafoundation.tasks.superres import MIN_SPOT_STEPS, spots_resolvable, superpixel_step_um

            step = superpixel_step_um(resolve_encoder(superres.encoder), superres.step_um)
            too_fine = [n for n in train if not spots_resolvable(data[n], step)]
            train = [n for n in train if n not in too_fine]
            if too_fine:
                notes.append(f"super-resolution {'left out' if not train else 'not trained on'} "
                             f"{', '.join(too_fine)}: spots span fewer than {MIN_SPOT_STEPS:g} superpixels of "
                             f"{step:g} um (Visium HD: --bin-um {MIN_SPOT_STEPS * step:g} or more)")
            if train:
                steps.append(dataclasses.replace(superres, train_sections=train))
    t = cfg["tumor"]
    if t["enabled"]:
        tumor = TumorStep(**common, sections=imaged, train_sections=imaged, out=folder.tumor,
                          grid_um=t["grid_um"] or 0.0, encoder=cfg["encoder"], route=t["route"] or None,
                          label_column=t["label_column"] or None, markers=t["markers"] or None,
                          stain_norm=stain)
        if _tumor_markers_usable(data, tumor):
            steps.append(tumor)
        elif tumor.route:
            raise InputError(None, "tumor.markers", f"route {tumor.route}: {_NO_MARKERS}")
        else:
            notes.append(f"tumour map left out: no labels (tumor.label_column) and {_NO_MARKERS}")
    c = cfg["clusters"]
    if c["enabled"]:
        steps.append(ClusterStep(**common, sections=imaged, out=folder.clusters, features=c["features"],
                                 method=c["method"], n_clusters=c["n_clusters"], smooth=c["smooth"],
                                 grid_um=c["grid_um"] or 0.0, encoder=cfg["encoder"],
                                 expression_model=(str(folder.expression_model) if c["features"] == "predicted"
                                                   else None),
                                 reference_column=c["reference_column"] or None,
                                 stain_norm=stain if c["features"] in ("colour_texture", "image") else None))
    return steps


def _marker(out: Path, step: RunStep) -> Path:
    return RunFolder(out).step_marker(step.name)


def step_inputs(step: RunStep, data: dict, data_path: str, cache: str) -> dict[str, str]:
    """Fingerprints of what ``step`` reads: the dataset, each section's image and counts, and every path among its
    settings (a model folder, a gene list), but not its own output or the embedding cache."""
    from spafoundation.io.anndata_spec import spatial_meta
    from spafoundation.utils.provenance import fingerprint

    paths = [data_path]
    for a in data.values():
        meta = spatial_meta(a)["metadata"]
        paths += [meta.get(k) for k in ("image_path", "counts_path") if meta.get(k)]
    paths += step.named_paths()
    return fingerprint(paths, exclude=(step.out, cache))


def _earlier_run(out: Path, step: RunStep, inputs: dict[str, str]) -> tuple[bool, str]:
    """(whether ``step`` was done by an earlier run from the same arguments and inputs, why not when it was done
    from others)."""
    from spafoundation.io.patches import TISSUE_MASK_VERSION
    from spafoundation.utils.provenance import changed

    try:
        done = json.loads(_marker(out, step).read_text())
    except (OSError, ValueError):
        return False, ""
    if not isinstance(done, dict) or not step.out.exists():
        return False, ""
    if done.get("argv") != step.argv:
        return False, "its options changed since the earlier run"
    if done.get("tissue_mask_version") != TISSUE_MASK_VERSION:  # tissue grids, tissue fractions: drawn on the mask
        return False, "the tissue mask changed since the earlier run (a newer spafoundation)"
    moved = changed(done.get("inputs") or {}, inputs)
    if moved:
        return False, (f"its input {moved[0]} changed since the earlier run" if len(moved) == 1 else
                       f"{len(moved)} of its inputs changed since the earlier run (first: {moved[0]})")
    return True, ""


def _mark_done(out: Path, step: RunStep, seconds: float, inputs: dict[str, str]) -> None:
    from spafoundation.io.patches import TISSUE_MASK_VERSION

    with atomic_path(_marker(out, step)) as tmp:
        Path(tmp).write_text(json.dumps({"argv": step.argv, "inputs": inputs, "seconds": round(seconds, 1),
                                  "tissue_mask_version": TISSUE_MASK_VERSION}) + "\n")


def run(args) -> int:
    from spafoundation.io.readers import DATA_OPTIONS, data_options, read_dataset
    from spafoundation.utils.config import load_yaml_config

    cfg = load_yaml_config(DEFAULTS, args.config, args.set)
    check_value_types(cfg, args.config)
    if args.sections:
        cfg["sections"] = args.sections
    if args.data:
        cfg["data"] = str(args.data)
    if args.pipeline_precision:
        cfg["precision"] = args.pipeline_precision
    for key in DATA_OPTIONS:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key in ("bin_um", "mpp", "image_scale"):
        v = cfg[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf")):
            raise InputError(args.config, key, f"must be a positive number{' of microns' * (key != 'image_scale')}, "
                             f"got {v!r}")
    if cfg["image"] is not None and not isinstance(cfg["image"], str):
        raise InputError(args.config, "image", f"must be the path of an image file, got {cfg['image']!r}")
    if cfg["precision"] is not None and cfg["precision"] not in CHOICES:
        raise InputError(args.config, "precision", f"must be one of {', '.join(CHOICES)}, got {cfg['precision']!r}")
    if not cfg["data"]:
        raise InputError(args.config, "data", "no dataset: give --data or data: in the config")
    data_path = cfg["data"]
    check_format_available(args)
    out = Path(args.out)
    if not args.data:  # data: from the config, which cli.main's output check did not see
        from spafoundation.utils.outputs import check_output_not_input, input_paths

        check_output_not_input(out, input_paths(argparse.Namespace(data=str(data_path), image=cfg["image"])))
    folder = RunFolder(out)
    # bad input fails before any write
    if not folder.steps.is_dir():  # a run folder this command wrote can be continued or redone
        check_output_dir(out)
    from spafoundation.models.cache import cache_root

    cache_root(cfg["cache_dir"] or folder.cache)
    # read once for every step: with the thumbnails, which the figures draw on (not for a plan only); every section,
    # so that a damaged file anywhere in the dataset is an error naming it before any step runs
    data = read_dataset(data_path, _names(cfg["sections"]), with_images=not args.dry_run, **data_options(cfg))
    notes: list[str] = []
    steps = plan(data_path, out, cfg, data, notes)
    if not args.dry_run:
        check_inputs(data, cfg)
    print(f"spafoundation run: {len(data)} sections from {data_path} -> {out}")
    from spafoundation.io.anndata_spec import image_path

    no_image = [n for n, a in data.items() if not image_path(a)]
    if no_image:
        shown = ", ".join(no_image[:10]) + (f", ... ({len(no_image)} in all)" if len(no_image) > 10 else "")
        print(f"  without an H&E image, left out of every step: {shown}")
    for note in notes:
        print(f"  {note}")
    for i, s in enumerate(steps, 1):
        print(f"  [{i}/{len(steps) + 1}] {s.title}: {s.command_line()}")
    if args.format == "spatialdata":
        print(f"  then every result in one SpatialData store: {folder.spatialdata}")
    print(f"  [{len(steps) + 1}/{len(steps) + 1}] report: {folder.report}")
    if args.dry_run:
        return 0
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    from spafoundation.utils.atomic import remove_stale_temporaries_under

    # left by a run that was killed (SIGKILL, a power cut); cli.main holds this folder's lock, so none is live
    for p in remove_stale_temporaries_under(out, unnamed=True):
        print(f"  removed {p.relative_to(out)}, a temporary file of a run that was killed")
    folder.output_marker.touch()  # the run folder and what its steps write in it are ours to replace
    with atomic_path(folder.config) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = []
    try:
        cache = str(cfg["cache_dir"] or folder.cache)
        for i, s in enumerate(steps, 1):
            inputs = step_inputs(s, data, data_path, cache)
            done, why_not = _earlier_run(out, s, inputs)
            if done:
                print(f"[{i}/{len(steps) + 1}] {s.title}: done in an earlier run, skipped")
                summary.append({"step": s.title, "status": "reused", "seconds": 0.0})
                continue
            # a step's earlier output is replaced by the step itself (utils/atomic.py), keeping the user's files
            print(f"[{i}/{len(steps) + 1}] {s.title}{f' (redone: {why_not})' if why_not else ''} ...", flush=True)
            t0 = time.perf_counter()
            code = s.run(data, quiet=args.quiet)
            if code != 0:
                raise _StepFailed(s, code)
            dt = time.perf_counter() - t0
            _mark_done(out, s, dt, step_inputs(s, data, data_path, cache))
            summary.append({"step": s.title, "status": "done", "seconds": round(dt, 1)})
        if args.format == "spatialdata":
            from spafoundation.io.run_store import write_run_store

            t0 = time.perf_counter()
            print(f"SpatialData store: {write_run_store(out, data)}", flush=True)
            summary.append({"step": "spatialdata store", "status": "done",
                            "seconds": round(time.perf_counter() - t0, 1)})
        t0 = time.perf_counter()
        if cfg["report"]["enabled"]:
            from spafoundation.report.run_report import build_run_report

            print(f"[{len(steps) + 1}/{len(steps) + 1}] report ...", flush=True)
            report = build_run_report(out, data_path, data, cfg, summary, top_genes=int(cfg["report"]["top_genes"]),
                                      notes=notes)
            summary.append({"step": "report", "status": "done", "seconds": round(time.perf_counter() - t0, 1)})
    except _StepFailed as e:
        if fresh and not any(r["status"] == "done" for r in summary):
            shutil.rmtree(out, ignore_errors=True)  # nothing finished: leave no half-made folder behind
        print(f"spafoundation run: step '{e.step.title}' failed (exit {e.code}); rerun to continue from the "
              "completed steps", file=sys.stderr)
        return e.code
    width = max(len(r["step"]) for r in summary)
    print("\nsummary")
    for r in summary:
        print(f"  {r['step']:<{width}}  {r['status']:<6}  {r['seconds']:>7.1f} s")
    if cfg["report"]["enabled"]:
        print(f"\nreport: {report.resolve()}")
    return 0


class _StepFailed(Exception):
    def __init__(self, step: RunStep, code: int):
        super().__init__(step.name)
        self.step, self.code = step, code


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="the whole analysis (expression, tumour, domains) and an HTML report")
    p.add_argument("--data", help="dataset folder, manifest or .h5ad (or data: in the config)")
    p.add_argument("--out", required=True, help="run folder (config.yaml, one folder per step, report.html)")
    p.add_argument("--config", help="YAML config (defaults: see spafoundation/commands/run.py DEFAULTS)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. expression.genes=hvg:100 (repeatable)")
    p.add_argument("--sections", help="comma-separated sections (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (as commands) and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_precision_option(p)
    add_data_options(p)
    add_format_option(p, "DIR/spafoundation.zarr, beside the steps' own files")
    p.set_defaults(func=run)
