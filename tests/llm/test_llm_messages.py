"""Request data model helpers: image parts and the prompt-token approximation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from medvl.llm.messages import estimate_prompt_tokens, image_part


def decode(part: dict) -> Image.Image:
    header, _, data = part["image_url"]["url"].partition(",")
    assert part["type"] == "image_url" and header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_image_part_round_trips_a_pil_image(rgb_image):
    image = decode(image_part(rgb_image, max_side=None))
    assert image.format == "JPEG" and image.size == rgb_image.size and image.mode == "RGB"
    ramp = np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype(np.uint8)
    smooth = Image.fromarray(ramp)
    error = np.abs(np.asarray(decode(image_part(smooth)), dtype=float) - ramp).mean()
    assert error < 3  # lossy JPEG, but the same picture


def test_image_part_downscales_to_max_side_and_reads_paths(rgb_image, tmp_path):
    path = tmp_path / "scan.png"
    rgb_image.convert("L").save(path)
    part = image_part(path, max_side=32, detail="low")
    assert decode(part).size == (32, 24) and decode(part).mode == "RGB"
    assert part["image_url"]["detail"] == "low"


def test_prompt_token_estimate_counts_text_images_and_message_overhead():
    messages = [
        {"role": "system", "content": "x" * 10},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:" + "A" * 9999}},
                                     {"type": "text", "text": "y" * 8}, {"type": "image"}]},
    ]
    assert estimate_prompt_tokens(messages, image_tokens=85) == (4 + 3) + (4 + 85 + 2 + 85)


def test_image_part_reports_an_unreadable_file(tmp_path):
    from medvl.io.images import ImageLoadError

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError):
        image_part(broken)
