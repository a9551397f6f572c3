"""scikit-learn's bundled 8x8 digits: the embedded default, nothing to download.

1797 images (1, 8, 8) with values 0..16, 10 classes. A fixed stratified 20% test split
(random_state 0) is held out; the rest is the training pool, split by `split_seed`.
"""

from __future__ import annotations

import numpy as np
import torch

from kdcli.data.base import DATASETS, DataSet, DataSpec, split_pool

DIGITS_TEST_FRACTION = 0.2


@DATASETS.register("digits")
def load_digits(spec: DataSpec) -> DataSet:
    """scikit-learn's bundled 8x8 digits: (N, 1, 8, 8) uint8, 10 classes, 1437 pool / 360 test."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    pool_x, test_x, pool_y, test_y = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_FRACTION, random_state=0, stratify=bunch.target)
    train_idx, val_idx = split_pool(len(pool_y), spec.val_fraction, spec.split_seed)
    return DataSet(
        name="digits", task="classification",
        x_pool=torch.from_numpy(pool_x), y_pool=torch.from_numpy(pool_y).long(),
        train_idx=train_idx, val_idx=val_idx,
        x_test=torch.from_numpy(test_x), y_test=torch.from_numpy(test_y).long(),
        num_outputs=10, scale=1 / 16, mean=(0.30,), std=(0.38,),
        class_names=[str(i) for i in range(10)],
    )
