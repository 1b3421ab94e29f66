"""The one table of weight dtypes: the names configs and `--dtype` accept, and their torch dtypes.

`DtypeName` is what model specs and training configs declare (`float32`, `bfloat16`, `float16`);
`torch_dtype` also takes the short forms (`fp32`, `bf16`, `fp16`, as `precision` spells them) and
`resolve_dtype` adds `auto` (keep the saved dtype) for loading a checkpoint. torch is imported only
when a dtype is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from medvl.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = ["ALIASES", "DTYPE_NAMES", "DtypeName", "UnknownDtype", "resolve_dtype", "torch_dtype"]

DtypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class UnknownDtype(UserError, ValueError):
    """A dtype name outside the table; the message lists the accepted ones."""


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype of a name or short form (`bfloat16` or `bf16`)."""
    import torch

    canonical = ALIASES.get(name, name)
    if canonical not in DTYPE_NAMES:
        raise UnknownDtype(f"unknown dtype {name!r}; choose one of {', '.join([*DTYPE_NAMES, *ALIASES])}")
    return getattr(torch, canonical)


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str":
    """For loading a checkpoint: `auto` (or None) keeps the saved dtype; names map to torch dtypes."""
    if dtype is None or dtype == "auto":
        return "auto"
    return dtype if not isinstance(dtype, str) else torch_dtype(dtype)
