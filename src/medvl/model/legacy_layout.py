"""What a checkpoint folder in the original LLaVA layout holds, read as released.

The original LLaVA code base (LLaVA-1.5, LLaVA-Med v1 and v1.5, HuatuoGPT-Vision) saves custom
model types in a `config.json` with `mm_*` keys beside the LLM's fields, weights as safetensors or
PyTorch `.bin` (sharded with an index, or one file), and names its vision tower by a path or hub id
in `mm_vision_tower` (HuatuoGPT-Vision ships it in `./vit/`). Everything a user can get wrong here
is a `ConversionError` naming the file and the fix. `medvl.model.convert` maps what is read here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

from medvl.errors import UserError, first_line
from medvl.model.checkpoint import read_model_config
from medvl.model.families import legacy_types

__all__ = ["ConversionError", "legacy_config", "weight_files", "read_weight_file", "read_legacy_weights", "find_tower"]

_SUPPORTED = {"mm_projector_type": ("linear", "mlp2x_gelu"), "mm_vision_select_feature": ("patch", "cls_patch"),
              "image_aspect_ratio": ("square", "pad"), "mm_patch_merge_type": ("flat",)}
_INDEXES = (("*.safetensors", "model.safetensors.index.json"), ("pytorch_model*.bin", "pytorch_model.bin.index.json"))


class ConversionError(UserError, ValueError):
    """The legacy checkpoint lacks something the conversion needs; the message says what to pass."""


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors or PyTorch .bin, sharded (with its index) or not."""
    for pattern, index_name in _INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as exc:
                raise ConversionError(f"{index}: not a weight index ({exc})") from exc
            missing = [name for name in names if not (folder / name).is_file()]
            if missing:
                raise ConversionError(f"{index} lists {', '.join(missing)}, missing from {folder}: download it again")
            return [folder / name for name in names]
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ConversionError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")


def read_weight_file(file: Path, keys_only: bool = False) -> Iterator[tuple[str, Any]]:
    """(key, tensor) pairs of one weight file (tensor None with `keys_only`), lazily where the format allows."""
    from safetensors import SafetensorError, safe_open

    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    yield key, None if keys_only else handle.get_tensor(key)
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ConversionError(f"{file}: unreadable weights ({first_line(exc)}); download it again") from exc


def read_legacy_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (key, tensor) of a checkpoint folder."""
    for file in weight_files(folder):
        yield from read_weight_file(file)


def legacy_config(source: Path) -> dict[str, Any]:
    """The folder's config.json (`read_model_config`), checked to be a legacy LLaVA type in a layout
    medvl converts."""
    path = source / "config.json"
    if not path.is_file():
        raise ConversionError(f"{source}: no config.json; point at the checkpoint folder")
    legacy = read_model_config(source)
    model_type = legacy["model_type"]
    known = legacy_types()
    if model_type not in known or "text_config" in legacy:  # native llava configs nest text_config
        raise ConversionError(f"{source}: model_type {model_type!r} with this layout is not a legacy LLaVA type "
                              f"({', '.join(known)} with mm_* keys)")
    for key, allowed in _SUPPORTED.items():  # the first value is LLaVA's default
        if legacy.get(key, allowed[0]) not in allowed:
            raise ConversionError(f"{path}: {key} {legacy[key]!r} is not supported ({', '.join(allowed)}); "
                                  "LLaVA-NeXT's anyres layouts and other projectors are not LLaVA-1.5 checkpoints")
    return legacy


def find_tower(legacy: dict[str, Any], source: Path, override: str | None) -> tuple[Path | None, str]:
    """(local tower folder, which setting named it): `--vision-tower`, else `mm_vision_tower` as a path of its own
    or relative to the checkpoint; (None, "") when it names no local folder (a hub id)."""
    candidates = [(override, "--vision-tower")] if override else [
        (legacy.get("mm_vision_tower"), "mm_vision_tower"), (legacy.get("vision_tower"), "vision_tower")]
    for candidate, how in candidates:
        for path in (Path(candidate), source / candidate) if candidate else ():
            if (path / "config.json").is_file():
                return path, how
    if override:
        raise ConversionError(f"--vision-tower {override}: no config.json there")
    return None, ""
