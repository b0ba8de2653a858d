"""Studies (issue #17): groups of models, claims about them, answered with a bootstrap over images and models.

`read_study(path)` parses and validates STUDY.toml before any work; `run_study(study)` analyses
every model and answers each hypothesis; `answer(study, metrics, rng)` answers them on per-model
metrics computed elsewhere; `write_study(result, out_dir)` writes JSON, CSV, HTML and plots.
"""

from .output import html_section, plot_png, to_csv, write_study
from .run import StudyResult, answer, metrics_from_report, run_study
from .spec import METRICS, Hypothesis, ModelEntry, Study, parse_hypothesis, read_study
from .stats import HypothesisResult, ModelMetrics, evaluate_hypothesis, spearman, verdict

__all__ = [
    "METRICS",
    "Hypothesis",
    "HypothesisResult",
    "ModelEntry",
    "ModelMetrics",
    "Study",
    "StudyResult",
    "answer",
    "evaluate_hypothesis",
    "html_section",
    "metrics_from_report",
    "parse_hypothesis",
    "plot_png",
    "read_study",
    "run_study",
    "spearman",
    "to_csv",
    "verdict",
    "write_study",
]
