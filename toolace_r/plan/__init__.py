"""`toolace-r plan`: per-process memory of every stage of a job, from the model's config.json alone, before anything
launches (shapes: where the shape comes from; estimate: the formulas; report: fits or what to change)."""
from toolace_r.plan.report import check_before_run, plan_command

__all__ = ["check_before_run", "plan_command"]
