"""The expression benchmark protocol: held-out sections (and patients), every contender in the same run.

Splits (``eval.splits``): leave-one-patient-out when two or more patients have images (the headline: one row per
direction, then their mean), and leave-one-section-out within each patient. For each split the genes are chosen on the training sections only (among the genes the test
section measures, names only), features come from the same per-section cache for every split, and each contender's
head is fitted on the training sections and scored per test section (metrics.evaluate_expression), never pooled.
A contender with a stain normalisation maps every section to a reference fitted on the split's training sections
only (``io.stain.fit_reference_on_sections``), as a fitted model does. A contender with ``reference`` also takes
the shared axes of its head (the programs', and those its members' targets are reduced to) from the benchmark's
reference sections (counts only, tasks/expression_reference.py), less the test sections and every section of a
test patient.
A random-init contender with several ``seeds`` is fitted and scored once per seed of its weights and its metrics
averaged over them (one draw of random weights is a noisy baseline); each seed's rows are kept beside the mean
(named by ``seed_name``), and ``seed_spread`` reports their range.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation import defaults
from spafoundation.eval.metrics import evaluate_expression
from spafoundation.eval.splits import benchmark_splits, section_patient, summarize_splits
from spafoundation.pp.genes import TARGET_SUM, expression_matrix, select_genes, transcriptome_z
from spafoundation.tasks.heads import PROGRAMS, build_head, wants_transcriptome
from spafoundation.tasks.spot_features import make_recipe, needs_encoder, spot_features

log = logging.getLogger(__name__)
SUMMARY_METRICS = ("mean_r", "median_r", "mean_r_top_hvg", "mean_r_top_expressed", "n_significant", "n_constant",
                   "rmse")


@dataclass
class Contender:
    """One row of the benchmark: a feature recipe (source, encoder, options) and a head."""

    name: str
    head: str = "ridge"
    source: str = "encoder"
    encoder: str | None = None
    tta: bool = False
    context: float = 1.0
    neighbours_um: float = 0.0
    standardize: str = "none"
    stain_norm: str = "none"  # macenko / reinhard: to a reference fitted on each split's training sections
    head_params: dict = field(default_factory=dict)
    # "hires": the test sections are read from a 2000 px copy of their image, as a user holding only Space Ranger's
    # tissue_hires_image.png has them (issue #18; eval/hires_copies.py); training sections keep their own image
    test_image: str = "given"
    ceiling: bool = False  # fitted on one half of the test section itself and scored on the other: not a contender
    reference: bool = False  # the shared axes also from the reference sections (ridge-ensemble head only)
    seeds: tuple[int, ...] = ()  # a random-init encoder's weight seeds, each fitted and scored, metrics averaged

    def recipe(self) -> dict:
        return make_recipe(source=self.source, tta=self.tta, context=self.context, neighbours_um=self.neighbours_um,
                           standardize=self.standardize, stain_norm=self.stain_norm)


# what the default features hold besides the encoder, as the rows name them (tasks.expression.DEFAULT_FEATURES)
PIPELINE_FEATURES = "colour/texture, nuclei, context, neighbours"
HIRES_TEST = "test image: hires-only copy (2000 px)"  # the rows of test_image="hires"
DEFAULT_HEAD = f"ridge ensemble + {PROGRAMS} programs"  # the default head (tasks/heads.py), as the rows name it
REFERENCE_ROW = "shared axes also from other patients' count-only sections"  # rows with Contender.reference


def pipeline_contender(name: str, encoder: str | None, head: str = defaults.EXPRESSION_HEAD) -> Contender:
    """The default features and head of fit-expression (tasks.expression.DEFAULT_FEATURES) with ``encoder``."""
    from spafoundation.tasks.expression import DEFAULT_FEATURES

    return Contender(name, head=head, encoder=encoder, **{k: v for k, v in DEFAULT_FEATURES.items()})


def baseline_contenders(default_encoder: str, random_encoder: str, *, extra_encoders: Sequence[str] = (),
                        options: bool = True, hires: bool = False, reference: bool = False,
                        random_seeds: int = 1) -> list[Contender]:
    """The issue's contenders in one run: the floor, hand-crafted features, a random-init encoder of the default's
    size, the default encoder alone with each head and each option, the full default pipeline (and the same
    pipeline on the random encoder, to show what pre-training adds), then any encoder the user names. ``hires``:
    the default pipeline and colour/texture again, scored on hires-only copies of the test sections. ``reference``:
    the default pipeline again with the reference sections informing its programs (and on the hires-only copies).
    ``random_seeds`` > 1: the random-init encoder's rows (+ ridge, and its pipeline) are each the mean over that many
    seeds of its weights."""
    section = {"standardize": "section"}

    def pipe(encoder: str, options: str) -> Contender:
        return pipeline_contender(f"pipeline: {encoder} + {PIPELINE_FEATURES}, {options}", encoder)

    rows = [
        Contender("training mean", head="mean", source="mean_colour"),
        Contender("mean colour + ridge", source="mean_colour"),
        Contender("mean colour + ridge, per-section z", source="mean_colour", **section),
        Contender("colour/texture + ridge", source="colour_texture"),
        Contender("colour/texture + ridge, per-section z", source="colour_texture", **section),
        Contender("nuclei + ridge, per-section z", source="nuclei", **section),
        seeded(Contender(f"{random_encoder} + ridge", encoder=random_encoder), random_seeds),
        Contender(f"{default_encoder} + ridge", encoder=default_encoder),
        Contender(f"{default_encoder} + ridge, per-section z", encoder=default_encoder, **section),
        Contender(f"{default_encoder} + mlp", head="mlp", encoder=default_encoder),
        # what pre-training adds to the default pipeline: the same on random-init weights
        seeded(pipe(random_encoder, "per-section z"), random_seeds),
    ]
    if options:
        rows += [
            Contender(f"{default_encoder} + ridge, tta", encoder=default_encoder, tta=True),
            Contender(f"{default_encoder} + ridge, context x2", encoder=default_encoder, context=2.0),
            Contender(f"{default_encoder} + ridge, neighbours 300 um", encoder=default_encoder, neighbours_um=300.0),
            replace(pipe(default_encoder, "no per-section z"), standardize="none"),
            # issue #17: one ridge on every block wins within a patient; the ensemble is the default for what
            # it keeps across patients
            replace(pipe(default_encoder, "per-section z, one ridge"), head="ridge"),
            # issue #17: what the shared expression programs add (the default head without them)
            replace(pipe(default_encoder, "per-section z, ridge ensemble, no programs"),
                    head_params={"programs": 0}),
            # issue #17: what reducing the members' targets to the training transcriptome's factors adds
            replace(pipe(default_encoder, f"per-section z, {DEFAULT_HEAD}, targets as they are"),
                    head_params={"transcriptome_factors": 0}),
            # issue #17: what the nuclear features add (the pipeline without them, same head)
            replace(pipeline_contender(f"pipeline: {default_encoder} + colour/texture, context, neighbours, "
                                       f"per-section z, {DEFAULT_HEAD}, no nuclei", default_encoder),
                    source="encoder+colour_texture"),
        ]
        for method in ("macenko", "reinhard"):  # issue #17: a default only where it beats none across patients
            rows += [
                Contender(f"colour/texture + ridge, per-section z, {method} stain norm", source="colour_texture",
                          stain_norm=method, **section),
                replace(pipe(default_encoder, f"per-section z, {method} stain norm"), stain_norm=method),
            ]
    rows.append(pipe(default_encoder, f"per-section z, {DEFAULT_HEAD} (default)"))
    if reference:
        rows.append(replace(pipe(default_encoder, f"per-section z, {DEFAULT_HEAD}, {REFERENCE_ROW}"), reference=True))
    if hires:  # issue #18: fitted on the sections' own images, predicting from a 2000 px copy of the test image
        rows += [replace(pipe(default_encoder, f"per-section z, {DEFAULT_HEAD}, {HIRES_TEST}"), test_image="hires"),
                 Contender(f"colour/texture + ridge, per-section z, {HIRES_TEST}", source="colour_texture",
                           test_image="hires", **section)]
        if reference:
            rows.append(replace(pipe(default_encoder, f"per-section z, {DEFAULT_HEAD}, {REFERENCE_ROW}, "
                                                      f"{HIRES_TEST}"), test_image="hires", reference=True))
    rows.append(replace(pipeline_contender("ceiling: default pipeline fitted on the other half of the test section "
                                           "itself", default_encoder), ceiling=True))
    for enc in extra_encoders:
        rows += [Contender(f"{enc} + ridge", encoder=enc),
                 pipe(enc, "per-section z")]
    return rows


def seeded(c: Contender, seeds: int) -> Contender:
    """``c`` (of a random-init encoder) at its registered seed, or the mean over weight seeds 0 .. ``seeds`` - 1."""
    if seeds <= 1:
        return c
    return replace(c, name=f"{c.name}, mean of {seeds} weight seeds", seeds=tuple(range(seeds)))


def seed_name(c: Contender, seed: int) -> str:
    """The name of one seed's rows of a contender with ``seeds``."""
    return f"{c.name} [seed {seed}]"


def seed_rows(c: Contender, per_seed: list[list[dict]], **overrides) -> list[dict]:
    """A split's rows of ``c``: with ``seeds``, each seed's rows (``per_seed``, one list per seed, the test sections
    in the same order) and then, under the contender's own name, their mean per test section (numeric fields;
    ``overrides`` for fields a mean means nothing for); without, the one list as it is."""
    if not c.seeds:
        return per_seed[0]
    means = []
    for i in range(len(per_seed[0])):
        mean = pd.DataFrame([scored[i] for scored in per_seed]).mean(numeric_only=True).to_dict()
        means.append({**per_seed[0][i], **mean, "contender": c.name, **overrides})
    return [r for scored in per_seed for r in scored] + means


class FeatureStore:
    """Per-section features of each recipe, computed once and shared by every split and head."""

    def __init__(self, sections: dict[str, ad.AnnData], cache_dir=None, progress: bool = False,
                 encoders: dict | None = None):
        self.sections, self.cache_dir, self.progress = sections, cache_dir, progress
        self._encoders: dict[str, object] = dict(encoders or {})  # contender encoder name -> built Encoder
        self._feats: dict[tuple[str, str], tuple[np.ndarray, list[int]]] = {}
        self.seconds: dict[str, float] = {}

    def encoder(self, name: str | None, seed: int | None = None):
        if name is None:
            return None
        key = name if seed is None else f"{name}@seed{seed}"
        if key not in self._encoders:
            from spafoundation.tasks.expression import resolve_encoder

            self._encoders[key] = resolve_encoder(name, seed=seed)
        return self._encoders[key]

    def get(self, contender: Contender, section: str, stain=None, seed: int | None = None
            ) -> tuple[np.ndarray, list[int]]:
        """(features, block widths) of ``section``; ``stain``: the split's ``StainReference`` where the contender
        normalises stain; ``seed``: the weight seed of a random-init encoder (None: the encoder as named)."""
        recipe = contender.recipe()
        if stain is not None:
            recipe["stain_reference"] = stain.to_dict()
        enc_name = contender.encoder if needs_encoder(recipe) else None
        key = (json.dumps([enc_name, seed, recipe], sort_keys=True), section)
        if key not in self._feats:
            t0 = time.perf_counter()
            self._feats[key] = spot_features(self.sections[section], recipe, self.encoder(enc_name, seed),
                                             cache_dir=self.cache_dir, progress=self.progress, with_blocks=True)
            self.seconds[key[0]] = self.seconds.get(key[0], 0.0) + time.perf_counter() - t0
        return self._feats[key]


def run_expression_benchmark(sections: dict[str, ad.AnnData], contenders: Sequence[Contender], *,
                             genes="hvg:50", target_sum: float | None = TARGET_SUM, cache_dir=None,
                             progress: bool = False, encoders: dict | None = None,
                             copies_dir=None, reference: dict[str, ad.AnnData] | None = None
                             ) -> tuple[pd.DataFrame, dict]:
    """Per (contender, split, test section) metrics, and the gene list of every split. ``encoders`` maps a
    contender's encoder name to an already built Encoder (e.g. a quantised one); other names are built.
    ``copies_dir``: where the hires-only copies of the sections are written, for contenders with
    ``test_image="hires"``. ``reference``: sections with counts (images not needed) for contenders with
    ``reference``; per split, less the training and test sections and every section of a test patient.

    Returns ``(rows, genes_per_split)``; ``summarize`` turns rows into the table (mean over test sections)."""
    splits = benchmark_splits(sections)
    if not splits:
        from spafoundation.errors import InputError

        raise InputError(None, "sections", "the benchmark needs at least two imaged sections with counts")
    store = FeatureStore({**sections, **_test_copies(sections, contenders, copies_dir)}, cache_dir, progress,
                         encoders)
    rows, gene_sets = [], {}
    references: dict[tuple[str, tuple[str, ...]], object] = {}

    def stain_for(c: Contender, train: Sequence[str]):
        """The reference of ``c``'s stain normalisation fitted on the training sections (once per split)."""
        if c.stain_norm == "none":
            return None
        key = (c.stain_norm, tuple(train))
        if key not in references:
            from spafoundation.io.stain import fit_reference_on_sections

            references[key] = fit_reference_on_sections([sections[n] for n in train], c.stain_norm)
        return references[key]

    for kind, direction, test, train in splits:
        split = SplitTargets.of(sections, train, test, genes, target_sum)
        gene_list = split.genes
        split_name = f"{kind}:{direction}:{'+'.join(test)}"
        gene_sets[split_name] = gene_list
        ref = _split_reference(reference, sections, train, test, gene_list, target_sum, contenders)
        for c in contenders:
            t0 = time.perf_counter()
            if c.ceiling:
                for t in test:
                    m = _within_section(c, store.get(c, t, stain_for(c, test)), sections[t], gene_list, target_sum)
                    rows.append({"contender": c.name, "split": kind, "direction": direction, "test": t,
                                 "n_train_sections": 0, "n_genes": len(gene_list), "alpha": None,
                                 "fit_seconds": round(time.perf_counter() - t0, 2), **m})
                continue
            stain = stain_for(c, train)
            per_seed = []
            for seed in c.seeds or (None,):
                X = np.concatenate([store.get(c, n, stain, seed)[0] for n in train])
                head = split.fit(c, X, store.get(c, train[0], stain, seed)[1], ref.z if c.reference else None)
                scored = []
                for t in test:
                    y_true = expression_matrix(sections[t], gene_list, target_sum)
                    image = t if c.test_image == "given" else _copy_name(t, c.test_image)
                    m = evaluate_expression(y_true, head.predict(store.get(c, image, stain, seed)[0]))
                    m.pop("r")
                    scored.append({"contender": c.name if seed is None else seed_name(c, seed), "split": kind,
                                   "direction": direction, "test": t, "n_train_sections": len(train),
                                   "n_genes": len(gene_list), "alpha": getattr(head, "alpha", None),
                                   "fit_seconds": round(time.perf_counter() - t0, 2), **m})
                per_seed.append(scored)
            rows += seed_rows(c, per_seed, alpha=None)
            log.info("%s %s: %s", split_name, c.name, rows[-1]["mean_r"])
    return pd.DataFrame(rows), gene_sets


class SplitTargets:
    """One split's genes (chosen on its training sections among those every test section measures), its training
    spots' targets and section labels, and a contender's head fitted on them."""

    def __init__(self, sections: dict[str, ad.AnnData], train: Sequence[str], genes: list[str], target_sum):
        self.sections, self.train, self.genes, self.target_sum = sections, list(train), genes, target_sum
        self.Y = np.concatenate([expression_matrix(sections[n], genes, target_sum) for n in train])
        self.groups = np.concatenate([[n] * sections[n].n_obs for n in train])
        self._transcriptome = None

    @classmethod
    def of(cls, sections: dict[str, ad.AnnData], train: Sequence[str], test: Sequence[str], genes="hvg:50",
           target_sum=TARGET_SUM) -> SplitTargets:
        candidates = set.intersection(*(set(sections[t].var_names) for t in test))
        return cls(sections, train, select_genes([sections[n] for n in train], genes, target_sum, sorted(candidates)),
                   target_sum)

    @property
    def transcriptome(self) -> np.ndarray:
        """The training spots' many-gene matrix, for the heads that reduce their targets with it (once per split)."""
        if self._transcriptome is None:
            self._transcriptome = transcriptome_z([self.sections[n] for n in self.train], self.target_sum)
        return self._transcriptome

    def fit(self, c: Contender, X: np.ndarray, blocks, reference=None, copies: int = 1):
        """``c``'s head fitted on features ``X`` of the training spots; ``copies`` > 1: ``X`` stacks that many
        views of every training section (each view's rows in the sections' order), which keep its targets and its
        cross-validation group."""
        head = build_head(c.head, c.head_params, c.recipe())
        options = {"reference": reference} if reference is not None else {}
        if wants_transcriptome(head, options.get("reference", ())):
            options["transcriptome"] = np.tile(self.transcriptome, (copies, 1))
        return head.fit(X, np.tile(self.Y, (copies, 1)), np.tile(self.groups, copies), blocks, **options)


def _split_reference(reference, sections, train, test, genes, target_sum, contenders):
    """The reference of one split (None where no contender uses one): never a training or test section, nor any
    section of a test patient, whose counts would tell the programs about the patient being scored."""
    if not any(c.reference for c in contenders):
        return None
    if not reference:
        raise ValueError("contenders with reference=True need the benchmark's reference sections")
    from spafoundation.tasks.expression_reference import ExpressionReference

    held = {*test, *(p for t in test if (p := section_patient(sections[t])) is not None)}
    kept = {n: a for n, a in reference.items()
            if n not in train and n not in held and section_patient(a) not in held}  # left out before any work
    return ExpressionReference.from_sections(kept, genes, target_sum)


def _copy_name(section: str, image: str) -> str:
    return f"{section}@{image}"


def _test_copies(sections: dict[str, ad.AnnData], contenders: Sequence[Contender], folder) -> dict[str, ad.AnnData]:
    """The copies of every section that some contender's ``test_image`` asks for, named ``<section>@<image>``."""
    kinds = {c.test_image for c in contenders} - {"given"}
    if kinds - {"hires"}:
        raise ValueError(f"unknown test_image {sorted(kinds - {'hires'})}; 'given' or 'hires'")
    if not kinds:
        return {}
    if folder is None:
        raise ValueError("contenders scored on hires-only copies need copies_dir, where the copies are written")
    from spafoundation.eval.hires_copies import hires_only_copy

    return {_copy_name(n, "hires"): hires_only_copy(a, folder) for n, a in sections.items()}


def _within_section(c: Contender, feats, section: ad.AnnData, genes, target_sum) -> dict:
    """A ceiling for a test section: the head fitted on its left half and scored on its right half, and the
    reverse, metrics averaged. What the image of this section can tell about its own expression."""
    X, blocks = feats
    Y = expression_matrix(section, genes, target_sum)
    x = np.asarray(section.obsm["spatial"])[:, 0]
    left = x <= np.median(x)
    parts = []
    for fit_rows in (left, ~left):
        head = build_head(c.head, c.head_params, c.recipe())
        options = ({"transcriptome": transcriptome_z([section[fit_rows]], target_sum)}
                   if wants_transcriptome(head) else {})
        head.fit(X[fit_rows], Y[fit_rows], np.zeros(int(fit_rows.sum())), blocks, **options)
        m = evaluate_expression(Y[~fit_rows], head.predict(X[~fit_rows]))
        m.pop("r")
        parts.append(m)
    return {k: float(np.mean([m[k] for m in parts])) for k in parts[0]}


def summarize(rows: pd.DataFrame, contenders: Sequence[Contender]) -> pd.DataFrame:
    """Mean over test sections of each metric per (split, direction, contender), then the mean of the
    leave-one-patient-out directions (``eval.splits.summarize_splits``)."""
    return summarize_splits(rows, [c.name for c in contenders], SUMMARY_METRICS)


def seed_spread(rows: pd.DataFrame, contenders: Sequence[Contender], metric: str = "mean_r") -> pd.DataFrame:
    """For each contender with seeds: per (split, direction) the lowest and highest ``metric`` of a single seed, and
    the seeds' standard deviation (``summarize_splits``'s rows of each seed, then their spread)."""
    out = []
    for c in contenders:
        if not c.seeds:
            continue
        per_seed = summarize_splits(rows, [seed_name(c, s) for s in c.seeds], [metric])
        for (split, direction), g in per_seed.groupby(["split", "direction"], sort=False):
            out.append({"split": split, "direction": direction, "contender": c.name, "seeds": len(g),
                        f"min_{metric}": g[metric].min(), f"max_{metric}": g[metric].max(),
                        f"sd_{metric}": g[metric].std(ddof=1)})
    return pd.DataFrame(out, columns=["split", "direction", "contender", "seeds", f"min_{metric}", f"max_{metric}",
                                      f"sd_{metric}"])


def contender_table(contenders: Sequence[Contender]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for c in contenders])


def markdown_table(summary: pd.DataFrame) -> str:
    head = ("| split | train -> test | contender | mean r | median r | top-50 HVG r | top-50 expressed r | n significant | "
            "constant | RMSE | test sections |")
    lines = [head, "|" + "---|" * 11]
    for _, r in summary.iterrows():
        def f(v, fmt="{:.3f}"):
            return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

        lines.append(f"| {r['split']} | {r['direction']} | {r['contender']} | {f(r['mean_r'])} | {f(r['median_r'])} | "
                     f"{f(r['mean_r_top_hvg'])} | {f(r['mean_r_top_expressed'])} | {f(r['n_significant'], '{:.1f}')} | "
                     f"{f(r['n_constant'], '{:.1f}')} | {f(r['rmse'])} | {int(r['n_test'])} |")
    return "\n".join(lines)
