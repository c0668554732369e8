"""Label maps: the value of pixels without a class, and the tables that turn stored label values into class indices.

Every remapping of labels (background reduction, raw COCO-Stuff ids, the classes a setting trains on) is a lookup
table indexed by the stored value, built here.
"""

from collections.abc import Sequence

import numpy as np


# The label of pixels that carry no class, as in the original release (mmsegmentation's default).
IGNORE_INDEX = 255
# Stored label values are looked up in tables this long (16-bit label maps); anything beyond becomes ignore.
LOOKUP_SIZE = 65536
# Pixels of unseen classes in transductive training: hidden from the loss until pseudo-labelled.
HIDDEN_LABEL = -1


def reduce_zero_label(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """
    Label 0 is background, not a class (PASCAL VOC, PASCAL Context): 0 becomes `ignore_index`, class k is stored as
    k + 1 and becomes k, and `ignore_index` stays ignore.

    Args:
        labels (`np.ndarray` of integers, any shape): stored label values.

    Returns:
        `np.ndarray` of the same shape and type.
    """
    reduced = labels - 1
    reduced[(labels == 0) | (labels == ignore_index)] = ignore_index
    return reduced


def index_lookup(class_ids: Sequence[int], size: int = LOOKUP_SIZE, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """
    A table of `size` entries that maps `class_ids[i]` to `i` and every other value to `ignore_index`: the classes
    a model segments into, picked out of a larger label space.

    Returns:
        `np.ndarray` of `int64`, shape `(size,)`.
    """
    lookup = np.full(size, ignore_index, dtype=np.int64)
    lookup[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids))
    return lookup


def identity_lookup(num_classes: int) -> np.ndarray:
    """Class indices stored as they are; values past the classes become ignore."""
    return index_lookup(range(num_classes))


def reduce_zero_lookup(num_classes: int) -> np.ndarray:
    """Background 0 ignored and class k stored as k + 1 (see `reduce_zero_label`); values past the classes ignored."""
    reduced = reduce_zero_label(np.arange(LOOKUP_SIZE))
    return np.where(reduced < num_classes, reduced, IGNORE_INDEX)


def raw_coco_lookup(raw_to_train: dict[str, int]) -> np.ndarray:
    """COCO-Stuff's raw label ids mapped to its 171 training ids, with the original release's table."""
    lookup = np.full(LOOKUP_SIZE, IGNORE_INDEX, dtype=np.int64)
    for raw, train in raw_to_train.items():
        lookup[int(raw)] = train
    return lookup
