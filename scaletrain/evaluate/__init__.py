"""The robustness evaluation suite.

``evaluate_model(model, loader, cfg.eval, device=, rank=, world_size=)`` returns a
report dict; ``write_report(report, out_dir)`` writes report.json / report.md /
robustness.png; ``format_table(report)`` is the terminal summary;
``evaluate_ensemble(models, loader, cfg.eval)`` adds member statistics and the
averaged-logits ensemble. Definitions of every number: docs/evaluation.md.
"""
from .report import format_table, to_markdown, write_report
from .suite import eps_grid, evaluate_model, normalised_auc, rebatch, seed_for

__all__ = ["evaluate_model", "write_report", "format_table", "to_markdown", "normalised_auc", "eps_grid",
           "rebatch", "seed_for"]
