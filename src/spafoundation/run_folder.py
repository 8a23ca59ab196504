"""The folder ``spafoundation run`` writes: where each step puts its output and where the report and the SpatialData
store read it, said once for all (commands/run.py, report/run_report.py, io/run_store.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    # the run's own files
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def steps(self) -> Path:
        """Markers of the finished steps (a rerun skips them)."""
        return self.root / ".steps"

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
