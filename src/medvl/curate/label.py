"""`medvl curate label`: an MLLM labels a sample of images medical / non-medical (PubMedVision's 10K).

Each image is sent once (through `LLMClient`: cached, bounded, retried) with the prompt in
`prompts/label_system.txt`; the reply must be `{"medical": bool, "category": str}`. Labels go to
a JSONL file, one line per image:

    {"image": "<path>", "label": "medical" | "non_medical", "category": "...", "source": "mllm:<model>"}

A relative image path is written relative to the labels file's folder, as `read_labels` reads it.
Hand labels use the same format (`"source": "hand"`), and `medvl curate train-classifier` reads
any number of such files. A garbled or refused reply, an image that does not load and an LLM
failure are reject lines (`{"id": image, "stage": "label", "reason", "detail"}`), never a label; an
endpoint that cannot be used at all (never reached or never answering, the API key rejected, no
such model, no quota: `EndpointUnusable`) stops the run. Re-running skips images already labelled or
rejected (and their replies are cached anyway).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from medvl.curate.prompts import read_text
from medvl.errors import Rejection, UserError
from medvl.io.images import image_files
from medvl.io.jsonl import JsonlAppender, RejectLog, iter_jsonl
from medvl.llm.config import LLMConfig

__all__ = ["label_images", "parse_label", "read_labels", "collect_images", "rejects_path", "BadReply", "LabelsError",
           "LABELS"]

LABELS = ("medical", "non_medical")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class LabelsError(UserError, ValueError):
    """Nothing to label, or a labels file line that cannot be used; the message names the path."""


class BadReply(Rejection):
    """A reply that is no label (`reason`: "invalid_json" or "schema"); its image is a reject line."""


def collect_images(paths: Iterable[str | Path], n: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under the given files/folders (`medvl.io.images.image_files`), a seeded sample of `n` when set;
    none at all is a LabelsError."""
    paths = list(paths)
    found = image_files(paths)
    if not found:
        raise LabelsError(f"no image files under {', '.join(map(str, paths))}")
    if n is not None and n < len(found):
        found = sorted(random.Random(seed).sample(found, n))
    return found


def parse_label(text: str) -> tuple[str, str]:
    """(label, category) from a reply; raises BadReply(reason, detail)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    try:
        data = json.loads(fenced.group(1) if fenced else stripped)
    except json.JSONDecodeError:
        raise BadReply("invalid_json", f"reply is not JSON: {text[:100]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("medical"), bool):
        raise BadReply("schema", f"no boolean 'medical' in {text[:100]!r}")
    category = data.get("category")
    return ("medical" if data["medical"] else "non_medical"), str(category) if category else ""


def _request(image: Path, max_side: int) -> Any:
    from medvl.io.images import load_image
    from medvl.llm.messages import ChatRequest, image_part

    content = [image_part(load_image(image), max_side), {"type": "text", "text": read_text("label_user.txt")}]
    return ChatRequest(
        [{"role": "system", "content": read_text("label_system.txt")}, {"role": "user", "content": content}],
        {"response_format": {"type": "json_object"}},
    )


def _done(paths: Iterable[Path]) -> set[str]:
    done = set()
    for path in paths:
        if path.exists():
            for _, item in iter_jsonl(path):
                if isinstance(item, dict):
                    done.add(str(item.get("image") or item.get("id")))
    return done


def _recorded_path(image: Path, out: Path) -> str:
    """`image` as the labels file `out` names it: absolute as given, relative from `out`'s folder."""
    return str(image) if image.is_absolute() else os.path.relpath(image, out.parent)


def rejects_path(out: Path) -> Path:
    """Where `label_images` logs the images it could not label, beside the labels file `out`."""
    return out.with_name(out.stem + ".rejects.jsonl")


def label_images(
    images: list[Path],
    llm: LLMConfig,
    out: str | Path,
    *,
    rejects: str | Path | None = None,
    max_side: int = 768,
    progress: bool = True,
) -> Counter[str]:
    """Label `images`, appending to `out` (labels) and `rejects`; return counts by outcome."""
    import asyncio

    from tqdm.auto import tqdm

    from medvl.io.images import ImageLoadError
    from medvl.llm.client import LLMClient
    from medvl.llm.messages import LLMError

    out = Path(out)
    rejects = Path(rejects) if rejects else rejects_path(out)
    done = _done([out, rejects])
    todo = [p for p in images if _recorded_path(p, out) not in done]
    counts: Counter[str] = Counter(already_done=len(images) - len(todo))
    client = LLMClient(llm)

    async def run(labels: JsonlAppender, reject_log: RejectLog, bar: Any) -> None:
        semaphore = asyncio.Semaphore(4 * llm.max_concurrency)

        async def one(image: Path) -> None:
            async with semaphore:
                try:
                    request = await asyncio.to_thread(_request, image, max_side)
                    reply = await client.complete(request)
                    label, category = parse_label(reply.text)
                except ImageLoadError as exc:
                    outcome = ("image_" + exc.reason, exc.detail)
                except LLMError as exc:
                    outcome = ("llm_" + exc.kind, str(exc))
                except BadReply as exc:  # a bug's ValueError is not a reject: it stops the run
                    outcome = (exc.reason, exc.detail)
                else:
                    outcome = None
                    labels.write(
                        {
                            "image": _recorded_path(image, out),
                            "label": label,
                            "category": category,
                            "source": f"mllm:{llm.model}",
                        }
                    )
                    counts[label] += 1
                if outcome is not None:
                    reject_log.reject(_recorded_path(image, out), "label", *outcome)
                    counts[f"rejected:{outcome[0]}"] += 1
                bar.update(1)

        await asyncio.gather(*(one(image) for image in todo))
        await client.aclose()

    with (
        JsonlAppender(out) as labels,
        RejectLog(rejects) as reject_log,
        tqdm(total=len(todo), desc="label", unit="image", disable=not progress) as bar,
    ):
        asyncio.run(run(labels, reject_log, bar))
    return counts


def read_labels(paths: Iterable[str | Path]) -> list[tuple[str, bool]]:
    """(image path, is_medical) from label files; a relative image path is taken from the file's folder."""
    examples = []
    for path in map(Path, paths):
        before = len(examples)
        for line_no, item in iter_jsonl(path):
            if not isinstance(item, dict):
                raise LabelsError(f"{path}:{line_no}: {item.reason}")
            label = item.get("label")
            if isinstance(item.get("medical"), bool):
                label = "medical" if item["medical"] else "non_medical"
            if label not in LABELS or not item.get("image"):
                raise LabelsError(f"{path}:{line_no}: needs 'image' and 'label' in {LABELS}")
            image = Path(item["image"])
            examples.append((str(image if image.is_absolute() else path.parent / image), label == "medical"))
        if len(examples) == before:
            raise LabelsError(f"{path}: no labels in it; expected JSON lines with 'image' and 'label' in {LABELS}")
    return examples
