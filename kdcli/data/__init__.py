"""Data sets: importing this package registers every loader."""

from kdcli.data import (
    digits,  # noqa: F401  (registers loaders)
    imagefolder,  # noqa: F401  (registers loaders)
    regression,  # noqa: F401  (registers loaders)
    vision,  # noqa: F401  (registers loaders)
)
from kdcli.data.base import DATASETS, DataSet, DataSpec, fingerprint, split_pool

__all__ = ["DATASETS", "DataSet", "DataSpec", "fingerprint", "split_pool", "load_dataset"]


def load_dataset(spec: DataSpec) -> DataSet:
    """Load `spec.name`; a name may carry an argument after a colon (imagefolder:PATH, csv:PATH)."""
    base, _, arg = spec.name.partition(":")
    spec.arg = arg
    return DATASETS.get(base)(spec)
