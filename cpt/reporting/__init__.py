"""Reporting across runs: comparing runs, grouping them into experiments, intervals over seeds, mechanisms, figures."""
