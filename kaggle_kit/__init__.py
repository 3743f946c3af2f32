"""kaggle_kit: fetch -> train -> blend -> submit for Kaggle image-classification competitions."""

__version__ = "0.1.0"


class KitError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits 1 (no traceback)."""
