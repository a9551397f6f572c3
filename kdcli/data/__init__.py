"""Data sets: importing this package registers every loader."""

from kdcli.data import (
    arrays,  # noqa: F401  (registers loaders)
    digits,  # noqa: F401  (registers loaders)
    imagefolder,  # noqa: F401  (registers loaders)
    regression,  # noqa: F401  (registers loaders)
    synthetic,  # noqa: F401  (registers loaders)
    text,  # noqa: F401  (registers loaders)
    vision,  # noqa: F401  (registers loaders)
)
from kdcli.data.base import DATASETS, DataSet, DataSpec, fingerprint, split_pool

__all__ = ["DATASETS", "DATASET_HELP", "DataSet", "DataSpec", "fingerprint", "split_pool", "load_dataset"]

# what `kdcli datasets` shows: how to name each data set on the command line, and one line for users
DATASET_HELP = {
    "digits": ("digits", "scikit-learn's 8x8 handwritten digits, 10 classes; bundled, nothing to download"),
    "mnist": ("mnist", "handwritten digits, 28x28 grey, 10 classes (--data-dir, --download)"),
    "fashion-mnist": ("fashion-mnist", "Zalando's clothing images, 28x28 grey, 10 classes (--data-dir, --download)"),
    "cifar10": ("cifar10", "32x32 colour photos, 10 classes; crop and flip by default (--data-dir, --download)"),
    "cifar100": ("cifar100", "32x32 colour photos, 100 classes; crop and flip by default (--data-dir, --download)"),
    "imagefolder": ("imagefolder:PATH", "your images, one folder per class (--image-size, default 32)"),
    "synthetic-regression": ("synthetic-regression", "seed 001's nonlinear function of 10 features, regression "
                                                     "(--n-samples, --n-features, --noise)"),
    "diabetes": ("diabetes", "scikit-learn's diabetes progression, 10 features, regression; bundled"),
    "text": ("text:PATH", "your UTF-8 text: a file, a folder or a glob, for language models "
                          "(--context, --tokenizer bytes | bpe:N | DIR)"),
    "python-docs": ("python-docs", "CPython's reference manual text (pydoc_data), about 465 KB of English, "
                                   "for language models; bundled"),
    "seqkd": ("seqkd:REF", "a text teacher's sampled sequences (kdcli sequence-kd) as training windows, its "
                           "corpus's validation and test (same --tokenizer and --context)"),
    "csv": ("csv:PATH", "your table: --target COLUMN; regression, or --task classification for integer labels"),
    "npz": ("npz:PATH", "your arrays of any shape: a .npz (or folder of .npy) with x, y, x_test, y_test (x_val, "
                        "y_val optional); integer y classifies, float y regresses (--task); normalized per "
                        "feature from the training split (--normalize none); memory-mapped"),
    "synthetic": ("synthetic:REF", "inputs synthesized from a teacher (kdcli synthesize); tested on the teacher's "
                                   "real test split when it loads, else on held-out synthetic inputs"),
}


def load_dataset(spec: DataSpec) -> DataSet:
    """Load `spec.name`; a name may carry an argument after a colon (imagefolder:PATH, csv:PATH, npz:PATH)."""
    base, _, arg = spec.name.partition(":")
    spec.arg = arg
    return DATASETS.get(base)(spec)
