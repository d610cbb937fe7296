"""The demo: a synthetic rewards-ranking world (`world`) and its cached bundle (`model`)."""
