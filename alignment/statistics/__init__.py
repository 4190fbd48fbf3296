"""The statistics of a comparison: win rates, intervals over seeds and prompts, rank intervals,
best-of-n, the over-optimisation fits and the equal-KL reading of a path."""
