"""Mirrored interleaving of a bench's baseline and subjects within one repeat.

On a machine whose load drifts, measuring A then B biases A/B by the drift between them. Here
every name is measured on every part, in order on even parts and in reverse on odd ones (A B C,
C B A, A B C, ...): over an even number of parts a load that grows or fades steadily during the
repeat adds the same to each name's total. A part is a slice of the workload (a chunk of prompts)
or, where the work does not split, a second pass over it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

Name = TypeVar("Name", bound=Hashable)
Part = TypeVar("Part")
Result = TypeVar("Result")


def mirrored(names: Sequence[Name], parts: Sequence[Part],
             measure: Callable[[Name, Part], Result]) -> dict[Name, list[Result]]:
    """`measure(name, part)` for every name and part in mirrored order; each name's results by part."""
    results: dict[Name, list[Result]] = {name: [] for name in names}
    for index, part in enumerate(parts):
        for name in names if index % 2 == 0 else reversed(names):
            results[name].append(measure(name, part))
    return results
