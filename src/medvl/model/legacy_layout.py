"""What a checkpoint folder in the original LLaVA layout holds, read as released.

The original LLaVA code base (LLaVA-1.5, LLaVA-Med v1 and v1.5, HuatuoGPT-Vision) saves custom
model types in a `config.json` with `mm_*` keys beside the LLM's fields, weights as safetensors or
PyTorch `.bin` (sharded with an index, or one file; a `.bin` is unpickled with `weights_only`, so no
code in it runs), and names its vision tower by a path or hub id in `mm_vision_tower`
(HuatuoGPT-Vision ships it in `./vit/`). Everything a user can get wrong here (a shard missing or cut
short, a pickle with objects in it, a setting or projector layout the native model cannot hold) is a
`ConversionError` naming the file or key and the fix. `medvl.model.convert` maps what is read here.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from medvl.errors import UserError, first_line
from medvl.model.checkpoint import read_model_config
from medvl.model.families import legacy_types

__all__ = ["PROJECTOR", "TOWER", "ConversionError", "legacy_config", "check_projector", "weight_files",
           "read_weight_file", "read_legacy_weights", "find_tower", "no_tower_folder", "tower_fix"]

PROJECTOR = "model.mm_projector."  # LLaVA's names for its parts' weights
TOWER = "model.vision_tower.vision_tower."

_NATIVE = "transformers' LlavaForConditionalGeneration"
_SUPPORTED = {  # key: (values medvl converts, the first LLaVA's default; why others are not)
    "mm_projector_type": (("linear", "mlp2x_gelu"), f"{_NATIVE} holds a Linear or Linear-GELU-Linear projector"),
    "mm_vision_select_feature": (("patch", "cls_patch"), f"{_NATIVE} feeds all tower tokens or all but CLS"),
    "image_aspect_ratio": (("square", "pad"), "LLaVA-NeXT's anyres layouts are not LLaVA-1.5 checkpoints"),
    "mm_patch_merge_type": (("flat",), "LLaVA-NeXT's anyres layouts are not LLaVA-1.5 checkpoints"),
}
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_PATTERNS = ("model*.safetensors", "pytorch_model*.bin", "*.safetensors")
_SHARD = re.compile(r"(?P<stem>.+)-\d+-of-(?P<total>\d+)(?P<ext>\.safetensors|\.bin)")


class ConversionError(UserError, ValueError):
    """The legacy checkpoint lacks something the conversion needs; the message says what to pass."""


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: those its index lists (safetensors' first), else transformers' single
    file (`model.safetensors`, `pytorch_model.bin`), else its unindexed shards (`model*.safetensors`, else
    `pytorch_model*.bin`, else any `*.safetensors`), whose names (`-0000K-of-0000N`) must make a whole set.
    Other files beside them (an adapter's safetensors) are not read."""
    for index_name in _INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError, TypeError) as exc:
                raise ConversionError(f"{index}: not a weight index ({exc})") from exc
            missing = [name for name in names if not (folder / name).is_file()]
            if missing:
                raise ConversionError(f"{index} lists {', '.join(missing)}, missing from {folder}: download it again")
            return [folder / name for name in names]
    for name in _SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for pattern in _PATTERNS:
        files = sorted(folder.glob(pattern))
        if files:
            _check_shard_set(folder, files)
            return files
    raise ConversionError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")


def _check_shard_set(folder: Path, files: list[Path]) -> None:
    """Shards named `NAME-0000K-of-0000N.EXT` found without their index must be all N of them."""
    present = {file.name for file in files}
    for file in files:
        shard = _SHARD.fullmatch(file.name)
        if shard:
            stem, total, ext = shard["stem"], shard["total"], shard["ext"]
            expected = [f"{stem}-{k:0{len(total)}d}-of-{total}{ext}" for k in range(1, int(total) + 1)]
            missing = [name for name in expected if name not in present]
            if missing:
                raise ConversionError(f"{folder}: shard(s) {', '.join(missing)} missing (and no index naming the "
                                      "shards): download the checkpoint again")


def read_weight_file(file: Path, shapes_only: bool = False) -> Iterator[tuple[str, Any]]:
    """(key, tensor) pairs of one weight file (the tensor's shape with `shapes_only`), lazily where the format
    allows. A PyTorch file is unpickled with `weights_only` (no code in it runs)."""
    from safetensors import SafetensorError, safe_open

    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_slice(key).get_shape() if shapes_only else handle.get_tensor(key)
        else:
            for key, tensor in _pickled_state(file).items():
                yield key, list(tensor.shape) if shapes_only else tensor
    except ConversionError:
        raise
    except pickle.UnpicklingError as exc:  # an object torch names ("unsupported GLOBAL posix.system"), or garbage
        what = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if what is None:
            raise ConversionError(f"{file}: unreadable weights (not a PyTorch file); download it again") from None
        raise ConversionError(
            f"{file}: holds Python objects besides tensors, which medvl does not unpickle (torch.load with "
            f"weights_only: {what}); if you trust the file, re-save its tensors as safetensors and convert that"
        ) from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ConversionError(f"{file}: unreadable weights ({first_line(exc)}); download it again") from exc


def _pickled_state(file: Path) -> dict[str, torch.Tensor]:
    """A PyTorch weight file's state dict: memory-mapped when it is torch's zip format (older files are not)."""
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        inside = f" (its tensors sit under {next(iter(state))!r})" if isinstance(state, dict) and state else ""
        raise ConversionError(f"{file}: not a state dict of named tensors, as save_pretrained writes{inside}; "
                              "give the checkpoint folder the model was released in")
    return state


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
    if legacy.get("image_aspect_ratio") is None:  # LLaVA: anything but pad/anyres is a plain resize and crop
        legacy["image_aspect_ratio"] = "square"
    for key, (allowed, why) in _SUPPORTED.items():
        if legacy.get(key, allowed[0]) not in allowed:
            raise ConversionError(f"{path}: {key} {legacy[key]!r} cannot be converted (medvl converts "
                                  f"{' or '.join(allowed)}): {why}")
    layer = legacy.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ConversionError(f"{path}: mm_vision_select_layer {layer!r} is not a layer index; LLaVA reads one "
                              "integer (-2: the second-to-last layer)")
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


def check_projector(keys: list[str], legacy: dict[str, Any], source: Path) -> None:
    """The projector weights are the layout `mm_projector_type` says (LLaVA builds the module from it, so a
    mismatch would convert into a model computing something else): one Linear (`model.mm_projector.weight`)
    for `linear`, two (`model.mm_projector.0.*`, `.2.*`) for `mlp2x_gelu`."""
    projector = legacy.get("mm_projector_type", "linear")
    slots = sorted({key[len(PROJECTOR):].partition(".")[0] for key in keys if key.startswith(PROJECTOR)})
    if not slots:
        raise ConversionError(f"{source}: its weights hold no projector ({PROJECTOR}*): give the whole LLaVA "
                              "checkpoint (a LoRA adapter or a pretraining stage's mm_projector.bin is not one: "
                              "merge it into the model first)")
    layers = [slot for slot in slots if slot.isdigit()]
    held = len(layers) or 1
    if held == (1 if projector == "linear" else 2) and (projector == "linear") != bool(layers):
        return
    names = ", ".join(PROJECTOR + slot + ".*" for slot in sorted(layers, key=int))
    what = f"{held} Linear layers ({names})" if held > 1 else f"one Linear ({names or PROJECTOR + 'weight'})"
    fixes = {1: "set mm_projector_type to linear", 2: "set mm_projector_type to mlp2x_gelu"}
    fix = (f"an mlp{held}x_gelu projector, which {_NATIVE} cannot hold" if held > 2 else
           "the projector is cut short: download the checkpoint again" if layers and held == 1 else fixes[held])
    said = f"{projector!r}" if "mm_projector_type" in legacy else f"absent (LLaVA's default: {projector!r})"
    raise ConversionError(f"{source / 'config.json'}: mm_projector_type is {said}, but the weights hold {what}: {fix}")


def tower_fix(legacy: dict[str, Any]) -> str:
    """What to pass when the tower folder does not fit the checkpoint."""
    named = legacy.get("mm_vision_tower") or legacy.get("vision_tower")
    return ("pass --vision-tower with a local copy of the tower this checkpoint was trained with"
            + (f" ({named})" if named else ""))


def no_tower_folder(legacy: dict[str, Any], source: Path, carries_weights: bool) -> str:
    """Why the tower's config is not at hand when no local folder was found, and what to pass."""
    named = legacy.get("mm_vision_tower") or legacy.get("vision_tower")
    what = "carries the tower's weights but not its config" if carries_weights else "does not carry the vision tower"
    if not named:
        return (f"{source} {what}, and its config.json names no mm_vision_tower: pass --vision-tower with a local "
                "copy of the tower it was trained with")
    return (f"{source} {what}, and mm_vision_tower {named!r} is not a local folder: download it where there is "
            "network and pass --vision-tower with that folder")
