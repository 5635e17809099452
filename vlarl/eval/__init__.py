"""Evaluation: seeded episodes, statistics, reports, paired comparisons, failure search, drift."""
