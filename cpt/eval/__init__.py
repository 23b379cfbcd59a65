"""Measuring one model: greedy evaluation on the tasks, continual-learning metrics, the run's results files."""
