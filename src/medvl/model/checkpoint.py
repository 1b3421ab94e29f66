"""Save and load medvl models in transformers' native format.

A saved folder holds `config.json` (LlavaForConditionalGeneration), safetensors weights,
`generation_config.json` (greedy, stops at EOS / end of turn), the processor (image processor,
tokenizer, chat template) and a model card. A plain Python with only transformers loads it:

    AutoProcessor.from_pretrained(d); AutoModelForImageTextToText.from_pretrained(d)

Every model folder a user gives (a saved model, a spec's tower or LLM, a teacher, a checkpoint to
convert) has its `config.json` read here first (`read_model_config`): a missing one, one that is not
valid JSON, not an object or without a `model_type` is one line naming the file and the fix, where
transformers raised a JSONDecodeError, TypeError or ValueError traceback. `load_model` and
`load_saved_processor` turn what transformers raises for a folder it still cannot load into one
`ModelLoadError` line.
"""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from medvl.errors import UserError, first_line
from medvl.io.files import atomic_write_text, ensure_folder, share_weights
from medvl.io.jsonl import JsonlFileError, read_json_object
from medvl.model.dtypes import resolve_dtype

__all__ = ["save_model", "load_model", "load_saved_processor", "model_folder", "read_model_config",
           "usable_device", "ModelLoadError", "NotAModelFolder", "UnusableDevice", "DISCLAIMER"]

DISCLAIMER = (
    "Research use only: outputs of this model are not medical advice and must not be used for "
    "diagnosis or treatment decisions."
)

class NotAModelFolder(UserError, FileNotFoundError):
    """A path given as a model folder that has no config.json, or one transformers could not read."""


class ModelLoadError(UserError, ValueError):
    """A folder that cannot be loaded as a saved medvl model."""


MODEL_CONFIG = "a model's config (a JSON object naming its model_type)"
RESTORE_CONFIG = ("restore it from where the model came from (a copy cut short or edited), "
                  "or save the model again")


_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [medvl, llava, medical]
---
# {name}

A LLaVA-style medical vision-language model saved by medvl as `LlavaForConditionalGeneration`.

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
processor = AutoProcessor.from_pretrained({name!r})
model = AutoModelForImageTextToText.from_pretrained({name!r})
```

Serve with vLLM: `vllm serve {shell_name}`.

**{disclaimer}**
"""


def save_model(model: Any, processor: Any, out_dir: str | Path, card: bool = True, name: str | None = None) -> Path:
    """Write model, processor, generation config (and a model card, for the folder `name`: by default
    `out_dir`'s, a temporary folder's final one otherwise) to `out_dir`."""
    out = ensure_folder(out_dir)
    name = name or out.name
    _name_text_architecture(model.config)
    model.save_pretrained(out)
    share_weights(out)
    processor.save_pretrained(out)
    if card and not (out / "README.md").exists():
        card_text = _CARD.format(name=name, shell_name=shlex.quote(name), disclaimer=DISCLAIMER)
        atomic_write_text(out / "README.md", card_text)
    return out


def _name_text_architecture(config: Any) -> None:
    """Fill `text_config.architectures`, which vLLM's LLaVA needs to build the language model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    text = getattr(config, "text_config", None)
    if text is not None and not getattr(text, "architectures", None):
        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text.model_type)
        if name:
            text.architectures = [name]


def read_model_config(folder: str | Path, key: str | None = None) -> dict[str, Any]:
    """The object in `folder`'s config.json. A folder without one, or a file that is not valid JSON,
    not an object or has no `model_type`, is a NotAModelFolder naming the file and the fix, its
    message starting with the config `key` that gave the folder, when there is one."""
    where = f"{key}: " if key else ""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise NotAModelFolder(f"{where}{folder} is not a saved model folder (no config.json)")
    try:
        return read_json_object(path, MODEL_CONFIG, RESTORE_CONFIG, {"model_type": str})
    except JsonlFileError as exc:
        raise NotAModelFolder(f"{where}{exc}") from None


def model_folder(path: str | Path, key: str | None = None) -> Path:
    """`path` as a saved model folder, its config.json read (`read_model_config`)."""
    read_model_config(path, key)
    return Path(path)


class UnusableDevice(UserError, RuntimeError):
    """A `--device` / `device:` that torch cannot put a tensor on here (the message says why)."""


def usable_device(name: str) -> torch.device:
    """`name` as a torch device, once a tensor was put on it (a misspelt name, `cuda` under a CPU-only
    torch or a GPU index past the last raise `UnusableDevice`, before any weights load)."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # torch: a bad name, a missing index; CUDA not compiled in
        raise UnusableDevice(f"device {name!r} cannot be used here ({first_line(exc)}); give cpu, or a "
                             "GPU this torch sees, e.g. cuda:0") from None
    return device


@contextmanager
def _loading(path: Path, key: str | None) -> Iterator[None]:
    """What transformers raises for a folder it cannot load (a broken weight or tokenizer file, a config
    it does not know) as a ModelLoadError naming `key` and the folder."""
    try:
        yield
    except (OSError, ValueError) as exc:
        where = f"{key}: " if key else ""
        raise ModelLoadError(f"{where}{path} is not a loadable medvl model ({first_line(exc)}); give the "
                             "folder that `medvl train`, `medvl build` or `medvl convert` wrote") from None


def load_saved_processor(path: str | Path, key: str | None = None) -> Any:
    """The processor of the saved model folder `path` (no weights read); `key` as `load_model`'s."""
    return _processor(model_folder(path, key), key)


def _processor(folder: Path, key: str | None) -> Any:
    """`AutoProcessor` of `folder`, a model folder already read (`model_folder`)."""
    from transformers import AutoProcessor

    with _loading(folder, key):
        return AutoProcessor.from_pretrained(folder)


def load_model(path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | None = None,
               key: str | None = None) -> tuple[Any, Any]:
    """(model, processor) from a native folder, in eval mode, tokenizer padding on the left; `key`
    names the setting that gave `path` in the error when it is not a loadable model folder."""
    from transformers import AutoModelForImageTextToText

    path = model_folder(path, key)
    weights_dtype = resolve_dtype(dtype)  # a --dtype or --device mistake is named before anything loads
    target = usable_device(device) if device else None
    processor = _processor(path, key)
    with _loading(path, key):
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=weights_dtype)
    if target is not None:
        model = model.to(target)
    model.eval()
    processor.tokenizer.padding_side = "left"
    return model, processor
