"""Model bundles and scorers: the `Scorer` seam, QuickScorer (exact, C) and LightGBM."""
