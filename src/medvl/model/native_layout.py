"""Where each key of a legacy LLaVA checkpoint goes in the native `LlavaForConditionalGeneration`, and
whether the two agree.

`NativeParts` reads the native model's module paths off the installed transformers; `map_keys` maps
the legacy keys onto them (the tower's prefix found by `tower_key_names`). The checks then refuse, in
one line naming the key and the config at fault, what would make a model that loads but computes
something else: weights with no place in the native model (beyond buffers older transformers saved),
native weights nothing supplies, a tower that does not fit the checkpoint's, and shapes the configs
do not give (a projector for a wider tower means the wrong `--vision-tower`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medvl.model.legacy_layout import PROJECTOR, TOWER, ConversionError, tower_fix

__all__ = ["NativeParts", "tower_key_names", "map_keys", "check_dropped", "tower_source",
           "check_complete", "check_shapes"]

_BUFFERS = ("rotary_emb.inv_freq", "position_ids")  # saved by older transformers, rebuilt by the native model


def tower_key_names(legacy: list[str], native: set[str]) -> dict[str, str]:
    """Legacy tower key → the installed tower class's key; {} when no single prefix change maps them.

    The two name the same parameters and differ by a leading module path (`vision_model.` in
    transformers 4's CLIPVisionModel, none in 5's); the change that covers every native key is found by
    matching one long native name against the legacy ones, so it follows whatever is installed.
    """
    if not legacy or not native:
        return {}
    anchor = max(native, key=len)
    changes = {(key[: -len(anchor)], "") for key in legacy if key.endswith(anchor)}
    changes |= {("", anchor[: -len(key)]) for key in legacy if anchor.endswith(key)}
    for strip, add in sorted(changes):
        names = {key: add + key[len(strip):] for key in legacy if key.startswith(strip)}
        names = {key: name for key, name in names.items() if name in native}
        if set(names.values()) == native:
            return names
    return {}


@dataclass(frozen=True)
class NativeParts:
    """Key prefixes of the native model's parts, read off the installed transformers' module tree."""

    language_model: str
    vision_tower: str
    projector: str
    lm_head: str
    projector_linears: tuple[str, ...]

    @classmethod
    def of(cls, model: Any) -> "NativeParts":
        names = {id(module): name + "." for name, module in model.named_modules()}
        decoder, tower = model.get_decoder(), model.get_encoder(modality="image")
        projector = next(m for m in model.base_model.children() if m is not decoder and m is not tower)
        linears = tuple(names[id(m)] for m in projector.modules() if isinstance(m, torch.nn.Linear))
        return cls(names[id(decoder)], names[id(tower)], names[id(projector)],
                   names[id(model.get_output_embeddings())], linears)

    def part_of(self, key: str) -> str:
        return max((p for p in (self.language_model, self.vision_tower, self.projector, self.lm_head)
                    if key.startswith(p)), key=len, default=key)


def map_keys(keys: list[str], model: Any) -> tuple[dict[str, str], list[str]]:
    """Legacy key → native key for every key that has a counterpart; the rest are returned as dropped."""
    parts = NativeParts.of(model)
    tower_names = tower_key_names([k.removeprefix(TOWER) for k in keys if k.startswith(TOWER)],
                                  set(model.get_encoder(modality="image").state_dict()))
    slots = sorted({int(slot) for k in keys if k.startswith(PROJECTOR)
                    for slot in [k[len(PROJECTOR):].split(".")[0]] if slot.isdigit()})  # Sequential indices
    native = set(model.state_dict())
    renames, dropped = {}, []
    for key in keys:
        name: str | None = None
        if key.startswith(PROJECTOR):
            slot, _, param = key[len(PROJECTOR):].partition(".")
            if not slot.isdigit():  # a single Linear: model.mm_projector.weight
                name = parts.projector_linears[0] + slot
            elif slots.index(int(slot)) < len(parts.projector_linears):
                name = parts.projector_linears[slots.index(int(slot))] + param
        elif key.startswith(TOWER):
            found = tower_names.get(key[len(TOWER):])
            name = parts.vision_tower + found if found else None
        elif key.startswith("lm_head."):
            name = parts.lm_head + key.removeprefix("lm_head.")
        elif key.startswith("model.") and not key.startswith("model.vision_tower."):
            name = parts.language_model + key.removeprefix("model.")
        if name in native:
            renames[key] = name
        else:
            dropped.append(key)
    return renames, dropped


def tower_source(keys: list[str], renames: dict[str, str], model: Any, tower_dir: Path) -> str:
    """"checkpoint" when the checkpoint's tower weights cover the native tower, else "folder"."""
    tower = model.get_encoder(modality="image")
    carried = [k for k in keys if k.startswith(TOWER)]
    if not carried:
        if not any(tower_dir.glob("*.safetensors")) and not any(tower_dir.glob("*.bin")):
            raise ConversionError(f"{tower_dir}: the checkpoint carries no vision tower and this folder has no "
                                  "weights either (*.safetensors / *.bin)")
        return "folder"
    if sum(k in renames for k in carried) < len(tower.state_dict()):
        raise ConversionError(
            f"the checkpoint's vision tower keys ({carried[0]}, ...) do not map onto the installed transformers' "
            f"{type(tower).__name__} (keys like {max(tower.state_dict(), key=len)}): is {tower_dir} the same "
            "tower family?")
    return "checkpoint"


def check_dropped(dropped: list[str], source: Path, tower_dir: Path, legacy: dict[str, Any]) -> None:
    """Legacy keys with no native counterpart may only be buffers older transformers saved; a weight is the
    sign of a config that does not describe the checkpoint (more layers than it says), and dropping it
    would make a model that loads but computes something else."""
    weights = [key for key in dropped if not key.endswith(_BUFFERS)]
    if not weights:
        return
    some = f"{len(weights)} of its weights (e.g. {weights[0]})"
    if weights[0].startswith(TOWER):
        raise ConversionError(f"{source}: {some} have no place in the vision tower the config in {tower_dir} "
                              f"describes; {tower_fix(legacy)}")
    raise ConversionError(f"{source}: {some} have no place in the model its config.json describes (a layer past "
                          "num_hidden_layers?): the config and the weights do not belong together; download the "
                          "checkpoint again")


def check_complete(model: Any, renames: dict[str, str], tower_from: str, projector: str, source: Path) -> None:
    """Every native weight is supplied: by the checkpoint (`renames`), the tower folder, the identity second
    Linear of a `linear` projector, or the tied input embeddings."""
    parts = NativeParts.of(model)
    supplied = [parts.vision_tower] if tower_from == "folder" else []  # filled in by convert_legacy
    supplied += [parts.projector_linears[1]] if projector == "linear" else []
    supplied += [parts.lm_head] if model.config.tie_word_embeddings else []
    covered = set(renames.values())
    missing = [k for k in model.state_dict() if k not in covered and not k.startswith(tuple(supplied))]
    if missing:
        raise ConversionError(f"{source}: its weights lack {len(missing)} the native model needs (e.g. "
                              f"{missing[0]}, from {_legacy_prefix(parts, missing[0])}*): the checkpoint is "
                              "incomplete; download it again")


def check_shapes(shapes: dict[str, list[int]], renames: dict[str, str], model: Any, source: Path, tower_dir: Path,
                 legacy: dict[str, Any]) -> None:
    """Each legacy tensor's shape is its native slot's (the vocabulary may grow by the added `<image>`); the
    first that is not is named with the config that set the slot and the fix."""
    parts = NativeParts.of(model)
    native = model.state_dict()
    vocab_tables = (parts.language_model + "embed_tokens.weight", parts.lm_head + "weight")
    for key, name in renames.items():
        have, want = list(shapes[key]), list(native[name].shape)
        if have == want or (name in vocab_tables and have[1:] == want[1:] and have[0] <= want[0]):
            continue
        if name == parts.projector_linears[0] + "weight" and have[0] == want[0]:
            hidden = f" (config.json's mm_hidden_size: {legacy['mm_hidden_size']})" if "mm_hidden_size" in legacy else ""
            raise ConversionError(f"{source}: {key} takes {have[1]}-wide image features{hidden}, but the tower in "
                                  f"{tower_dir} gives {want[1]} (its hidden_size): {tower_fix(legacy)}")
        if name.startswith(parts.vision_tower):
            raise ConversionError(f"{source}: {key} has shape {have}, but the tower config in {tower_dir} makes it "
                                  f"{want}; {tower_fix(legacy)}")
        raise ConversionError(f"{source}: {key} has shape {have}, but its config.json makes it {want}: the config "
                              "and the weights do not belong together; download the checkpoint again")


def _legacy_prefix(parts: NativeParts, native_key: str) -> str:
    part = parts.part_of(native_key)
    return {parts.projector: PROJECTOR, parts.vision_tower: TOWER, parts.lm_head: "lm_head."}.get(part, "model.")
