"""Tasks: the registry of the 12 tasks with the paper's prompts, their headline metrics, and the official metrics."""

from p2p.tasks.registry import TASKS, TaskSpec, get_task, headline_key, headline_metric, parse_output

__all__ = ["TASKS", "TaskSpec", "get_task", "headline_key", "headline_metric", "parse_output"]
