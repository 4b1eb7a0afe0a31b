"""Metrics: two-sample distances for toy data (more in later modules)."""
