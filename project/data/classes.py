"""Class and task vocabularies, and tolerant matching of class-folder names."""

from __future__ import annotations

import re
from collections.abc import Sequence

BIRADS_CLASSES: tuple[str, ...] = ("2", "3", "4A", "4B", "4C", "5")
MALIGNANT_FROM = 4  # BI-RADS 4 and above: biopsy recommended
FEATURE_TASKS: tuple[str, ...] = ("boundary", "calcification", "direction", "shape")

_NOISE = re.compile(r"bi[-_ ]?rads|category|class|cat|类|級|级", re.IGNORECASE)
_NON_ALNUM = re.compile(r"[^0-9a-z]")


class UnknownClassFolder(ValueError):
    """A class folder whose name matches none of the configured classes."""


def normalise_class_name(name: str) -> str:
    """'BI-RADS 4A', '4A类', '4类a' and '4a' all become '4a'."""
    return _NON_ALNUM.sub("", _NOISE.sub("", name).lower())


def match_class_folder(folder_name: str, classes: Sequence[str]) -> int:
    """Index in `classes` of the category a folder names, or UnknownClassFolder."""
    key = normalise_class_name(folder_name)
    for index, cls in enumerate(classes):
        if normalise_class_name(cls) == key:
            return index
    raise UnknownClassFolder(
        f"class folder {folder_name!r} names none of the classes {list(classes)}"
    )


def birads_number(name: str) -> int | None:
    """The BI-RADS category number a class names ('4A类' -> 4), or None."""
    number = re.match(r"\d+", normalise_class_name(name))
    return int(number.group()) if number else None


def first_malignant_class(classes: Sequence[str]) -> int | None:
    """Index of the first class whose BI-RADS number is MALIGNANT_FROM or more ('4', '4A', ...), or None."""
    for index, name in enumerate(classes):
        number = birads_number(name)
        if number is not None and number >= MALIGNANT_FROM:
            return index
    return None
