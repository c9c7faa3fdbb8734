"""LLM-as-a-judge scoring of open-ended responses (paper App. J)."""

from p2p.judge.judge import (
    Judge,
    JudgeItem,
    JudgeResult,
    JudgeSettings,
    make_judge,
    parse_score,
    summarize_scores,
)

__all__ = ["Judge", "JudgeItem", "JudgeResult", "JudgeSettings", "make_judge", "parse_score", "summarize_scores"]
