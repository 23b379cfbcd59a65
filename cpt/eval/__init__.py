"""Measuring a run: scoring answers, greedy evaluation, continual-learning metrics, results files, comparisons."""
