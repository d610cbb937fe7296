"""Feature stores: the `FeatureStore` seam, the in-process store, Redis, cache and hedging."""

from ranking.features.store import FeatureStore, FetchResult, Lookup

__all__ = ["FeatureStore", "FetchResult", "Lookup"]
