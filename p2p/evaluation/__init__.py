"""Evaluation: `answers` runs every method on the test queries, `scores` scores the answers alike (intervals, paired
differences). The evaluate stages (p2p.stages.evaluate) are the recipe over both."""
