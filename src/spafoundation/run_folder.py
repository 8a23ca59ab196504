"""The folder ``spafoundation run`` writes: where each step puts its output and where the report and the SpatialData
store read it, said once for all (commands/run.py, report/run_report.py, io/run_store.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spafoundation.utils.atomic import OUTPUT_MARKER


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # the steps' outputs: each a command's --out
    @property
    def expression_model(self) -> Path:
        return self.root / "expression" / "model"

    @property
    def expression_model_config(self) -> Path:
        """What the model was trained on, its genes, head and encoder (``ExpressionModel.save``)."""
        return self.expression_model / "config.json"

    @property
    def predicted(self) -> Path:
        """predict-expression's .h5ad; its metrics and figures sit beside it (``predicted_metrics``,
        ``predicted_maps``)."""
        return self.root / "expression" / "predicted.h5ad"

    @property
    def predicted_metrics(self) -> Path:
        return self.predicted.with_suffix(".metrics.json")

    def predicted_maps(self, section: str) -> Path:
        return self.predicted.parent / f"{self.predicted.stem}_{section}_maps.png"

    @property
    def superres(self) -> Path:
        return self.root / "superres"

    def superres_section(self, section: str) -> Path:
        return self.superres / f"{section}.h5ad"

    @property
    def tumor(self) -> Path:
        return self.root / "tumor"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters"

    # inside the tumour and domain steps' folders (commands/tumor.py, commands/cluster.py)
    def spots(self, step: Path) -> Path:
        return step / "spots.h5ad"

    def grid(self, step: Path) -> Path:
        return step / "grid.h5ad"

    def metrics(self, step: Path) -> Path:
        return step / "metrics.json"

    def figures(self, step: Path, kind: str) -> list[Path]:
        """A step's figures, one per section: ``<section>_<kind>.png`` (kind: tumor, clusters, superres)."""
        return sorted(step.glob(f"*_{kind}.png"))

    # the run's own files
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def output_marker(self) -> Path:
        """Says the folder is spafoundation's to replace (utils/atomic.py), as every command's output folder."""
        return self.root / OUTPUT_MARKER

    @property
    def steps(self) -> Path:
        """Markers of the finished steps (a rerun skips them)."""
        return self.root / ".steps"

    def step_marker(self, name: str) -> Path:
        """The marker of the finished step ``name``: its command line and its inputs' fingerprints."""
        return self.steps / f"{name}.json"

    @property
    def spatialdata(self) -> Path:
        """``run --format spatialdata``: every result in one store."""
        return self.root / "spafoundation.zarr"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def report_files(self) -> Path:
        return self.root / "report_files"

    @property
    def overview(self) -> Path:
        """The report's figure of every imaged section with its spots."""
        return self.report_files / "overview.png"

    def predicted_figure(self, section: str) -> Path:
        """The report's figure of a predicted section without counts to compare with."""
        return self.report_files / f"{section}_predicted.png"
