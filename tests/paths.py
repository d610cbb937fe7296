"""Where the test data shipped with the repository lives (one definition for every test)."""

from pathlib import Path

__all__ = ["LETOR"]

#: LightGBM's lambdarank example data; see data/letor/README.md for its origin and license.
LETOR = Path(__file__).resolve().parent / "data" / "letor"
