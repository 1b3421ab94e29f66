"""Save and load medvl models in transformers' native format.

A saved folder holds `config.json` (LlavaForConditionalGeneration), safetensors weights,
`generation_config.json` (greedy, stops at EOS / end of turn), the processor (image processor,
tokenizer, chat template) and a model card. A plain Python with only transformers loads it:

    AutoProcessor.from_pretrained(d); AutoModelForImageTextToText.from_pretrained(d)
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import torch

from medvl.errors import UserError, first_line
from medvl.io.files import atomic_write_text, ensure_folder, share_weights
from medvl.model.dtypes import resolve_dtype

__all__ = ["save_model", "load_model", "model_folder", "usable_device", "NotAModelFolder", "UnusableDevice",
           "DISCLAIMER"]

DISCLAIMER = (
    "Research use only: outputs of this model are not medical advice and must not be used for "
    "diagnosis or treatment decisions."
)

class NotAModelFolder(UserError, FileNotFoundError):
    """A path given as a saved model that holds none."""


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


def save_model(model: Any, processor: Any, out_dir: str | Path, card: bool = True) -> Path:
    """Write model, processor, generation config (and a model card) to `out_dir`."""
    out = ensure_folder(out_dir)
    _name_text_architecture(model.config)
    model.save_pretrained(out)
    share_weights(out)
    processor.save_pretrained(out)
    if card and not (out / "README.md").exists():
        card_text = _CARD.format(name=out.name, shell_name=shlex.quote(out.name), disclaimer=DISCLAIMER)
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


def model_folder(path: str | Path, key: str | None = None) -> Path:
    """`path` as a saved model folder; one without config.json is a NotAModelFolder, whose message
    starts with the config `key` that gave the path, when there is one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        where = f"{key}: " if key else ""
        raise NotAModelFolder(f"{where}{path} is not a saved model folder (no config.json)")
    return path


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


def load_model(path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | None = None,
               key: str | None = None) -> tuple[Any, Any]:
    """(model, processor) from a native folder, in eval mode, tokenizer padding on the left; `key`
    names the setting that gave `path` in the error when it is not a model folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = model_folder(path, key)
    target = usable_device(device) if device else None
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=resolve_dtype(dtype))
    if target is not None:
        model = model.to(target)
    model.eval()
    processor.tokenizer.padding_side = "left"
    return model, processor
