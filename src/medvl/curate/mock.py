"""A deterministic stand-in model for the curation prompts, for the mock OpenAI server.

`responder(body)` recognises which curate prompt a request carries and answers in its format:
reformatting → the JSON object, self-instruct → a User/Assistant transcript, labelling → the
`{"medical": ..}` object (medical unless the image is mostly white, like a chart). Replies depend
only on the request, so two runs give identical outputs. Use it with the mock server:

    python -m medvl.llm.mock_server --responder medvl.curate.mock:responder --port 8000
    medvl curate run configs/curate/pubmedvision.yaml generate.reformat.llm.base_url=http://127.0.0.1:8000/v1

Tests and `bench/curate_throughput.py` use it too.
"""

from __future__ import annotations

import json
from typing import Any

from medvl.llm.messages import body_key

__all__ = ["responder", "prompt_kind"]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def prompt_kind(body: dict[str, Any]) -> str:
    """Which curate prompt a request body carries: reformat, self_instruct, label or other."""
    messages = body.get("messages", [])
    system = _text(messages[0]) if messages else ""
    if "medical images and non-medical images" in system:
        return "label"
    if "Write two things:" in system:
        return "reformat"
    if messages and "Figure Caption:" in _text(messages[-1]):
        return "self_instruct"
    return "other"


def _caption(body: dict[str, Any]) -> str:
    last = _text(body["messages"][-1])
    for marker in ("Caption:", "Figure Caption:\n"):
        if marker in last:
            return last.split(marker, 1)[1].strip().split("\n")[0]
    return last[:200]


def _mostly_white(body: dict[str, Any]) -> bool:
    import base64
    import io

    import numpy as np
    from PIL import Image

    for part in body["messages"][-1].get("content") or []:
        if isinstance(part, dict) and part.get("type") == "image_url":
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
            return bool((grey > 235).mean() > 0.6)
    return False


def responder(body: dict[str, Any]) -> str:
    kind = prompt_kind(body)
    tag = body_key(body)[:8]
    if kind == "label":
        white = _mostly_white(body)
        return json.dumps({"medical": not white, "category": "chart" if white else "scan"})
    caption = _caption(body)
    if kind == "reformat":
        return json.dumps(
            {
                "modality": "CT",
                "body_part": "chest",
                "description": f"The image shows {caption[:300]} ({tag}).",
                "question": "What is the main finding in this image?",
                "answer": f"The main finding is {caption[:160].lower()} ({tag}).",
            }
        )
    if kind == "self_instruct":
        return (
            f"User: What does the image show?\n\nAssistant: It shows {caption[:200]} ({tag}).\n\n"
            "User: Is anything abnormal visible?\n\nAssistant: There is an abnormal region that a "
            "specialist should review."
        )
    return f"mock reply {tag}"
