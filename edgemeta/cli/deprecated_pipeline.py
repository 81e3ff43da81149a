"""Deprecated, removed in edgemeta 0.3: what `edgemeta.pipeline` (`edgemeta.train.pipeline`) held in 0.1, re-exported.

Import from the new homes instead: recipes from `edgemeta.train.recipes`; `export_run` and `compare_on_test`
from `edgemeta.cli.export`; `evaluate_path` from `edgemeta.cli.evaluate`; `run_demo` from `edgemeta.cli.demo`;
`build_preset` from `edgemeta.cli.preset`; `EvalResult` and `per_image_latency_ms` from `edgemeta.runtime.evaluation`.
"""

from edgemeta.cli.demo import run_demo
from edgemeta.cli.evaluate import evaluate_path
from edgemeta.cli.export import compare_on_test, export_run
from edgemeta.cli.preset import build_preset
from edgemeta.runtime.evaluation import EvalResult, per_image_latency_ms
from edgemeta.train.recipes import LEARNER_SETTINGS, OMNIGLOT_RECIPE, RECIPES, recipe_for

__all__ = ["EvalResult", "LEARNER_SETTINGS", "OMNIGLOT_RECIPE", "RECIPES", "build_preset", "compare_on_test",
           "evaluate_path", "export_run", "per_image_latency_ms", "recipe_for", "run_demo"]
