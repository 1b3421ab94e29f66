"""What the GPU check runs on and with: its sizes (FULL on one GPU, TINY on a CPU), the run context,
the environment report, and the model and data every later section uses.

`build` makes the model the way a user does, from a `ModelSpec` (`medvl.model.build.build_model`,
random weights) saved in the native format, and writes synthetic LLaVA records: two question /
answer turns about one of VQA-RAD's real images, lengths drawn from `Sizes.tokens`.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]
WORDS = ("lesion opacity left right upper lower lobe nodule margin contrast enhancement signal axial "
         "coronal sagittal normal abnormal mass fluid effusion cardiac border density calcified smooth "
         "irregular small large the of with without is are there no evidence consistent suggestive mild "
         "moderate severe").split()
QUESTIONS = ("What abnormality is seen", "Where is the lesion located", "Describe the findings",
             "Is the study normal", "Which organ is affected", "What imaging modality was used")


class Skip(Exception):
    """A section that cannot run here (no GPU, a package missing); its message says why."""


@dataclass(frozen=True)
class Sizes:
    """How big each section runs: FULL on one GPU, TINY on a CPU in well under a minute."""

    device: str
    spec: dict[str, Any]          # a ModelSpec without its tokenizer
    records: int                  # synthetic training records: one epoch covers each run's steps
    tokens: tuple[int, int]       # sequence length range per record, image tokens included
    max_length: int
    batch: int
    window: int                   # optimizer steps per measurement window (the first one is the warm-up)
    steps: int                    # measured steps after the warm-up window
    lora_steps: int
    workers: int                  # DataLoader workers
    profile_steps: int
    gen_prompts: int
    gen_batch1_prompts: int
    gen_batches: tuple[int, ...]
    gen_tokens: int
    eval_limit: int | None
    eval_batch: int
    eval_tokens: int | None       # generation.max_new_tokens of the eval (None: the config's)
    budget_s: float
    threads: int | None           # torch CPU threads per section (None: torch's default)


TINY_SPEC = {
    "vision": {"family": "clip", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2,
               "num_heads": 2, "intermediate_size": 64},
    "text": {"family": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "intermediate_size": 128, "max_position_embeddings": 512, "tie_word_embeddings": True},
    "projector": "mlp2x_gelu", "chat_template": "chatml",
}
FULL = Sizes(
    device="cuda",
    # CLIP ViT-L/14-336 (LLaVA-1.5's tower) → mlp2x_gelu → a Llama-3.2-1B-shaped LLM, SmolLM2's 49k vocabulary
    spec={"vision": {"family": "clip", "image_size": 336, "patch_size": 14, "hidden_size": 1024,
                     "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
          "text": {"family": "llama", "hidden_size": 2048, "num_layers": 16, "num_heads": 32,
                   "num_kv_heads": 8, "intermediate_size": 8192, "max_position_embeddings": 4096,
                   "tie_word_embeddings": True},
          "projector": "mlp2x_gelu", "chat_template": "chatml", "dtype": "bfloat16"},
    records=1024, tokens=(1024, 2048), max_length=2048, batch=16, window=10, steps=50, lora_steps=20,
    workers=6,
    profile_steps=3, gen_prompts=128, gen_batch1_prompts=8, gen_batches=(1, 32, 128), gen_tokens=32,
    eval_limit=None, eval_batch=64, eval_tokens=None, budget_s=420, threads=None,
)
TINY = Sizes(
    device="cpu", spec=TINY_SPEC, records=32, tokens=(48, 120), max_length=160, batch=4, window=2, steps=4,
    lora_steps=2, workers=1, profile_steps=2, gen_prompts=6, gen_batch1_prompts=3, gen_batches=(1, 3, 6),
    gen_tokens=6, eval_limit=6, eval_batch=3, eval_tokens=8, budget_s=300,
    threads=1,  # tiny matrices: more threads only wait on each other, badly so on a busy machine
)


@dataclass(frozen=True)
class Context:
    sizes: Sizes
    tokenizer: Path
    vqa_rad: Path
    work: Path
    out: Path

    @property
    def cuda(self) -> bool:
        return self.sizes.device == "cuda"

    @property
    def model_dir(self) -> Path:
        return self.work / "model"

    @property
    def data(self) -> Path:
        return self.work / "data" / "records.jsonl"


def spec_for(ctx: Context, spec: dict[str, Any]) -> Any:
    from medvl.model.spec import ModelSpec

    return ModelSpec.model_validate({**spec, "text": {**spec["text"], "tokenizer": str(ctx.tokenizer)}})


def sync(ctx: Context) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.synchronize()


def peak_gib(ctx: Context) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None


# --------------------------------------------------------------------------------------------- environment
def environment(ctx: Context) -> list[Row]:
    """Versions, the device, what medvl needs from transformers, and the measured bf16 matmul rate."""
    import inspect
    import platform

    import torch
    from packaging.version import Version
    from transformers import TrainingArguments

    if ctx.cuda and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU here; on a CPU run `python bench/gpu_check.py --tiny`")
    rows = [{"item": "python", "value": platform.python_version()},
            {"item": "torch", "value": f"{torch.__version__} (CUDA {torch.version.cuda})"},
            {"item": "device", "value": torch.cuda.get_device_name() if ctx.cuda else "CPU (--tiny)"}]
    for name in ("transformers", "accelerate", "peft", "pydantic", "bitsandbytes", "deepspeed"):
        try:
            rows.append({"item": name, "value": metadata.version(name)})
        except metadata.PackageNotFoundError:
            rows.append({"item": name, "value": "not installed"})
    transformers_version = Version(metadata.version("transformers"))
    has_arg = "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
    rows.append({"item": "transformers ≥ 5.20 (medvl's requirement)",
                 "value": f"{'yes' if transformers_version >= Version('5.20') else 'NO'}; TrainingArguments "
                          f"{'has' if has_arg else 'LACKS'} activation_checkpointing, which medvl train "
                          "passes"})
    if ctx.cuda:
        rows.append({"item": "bf16 matmul 8192³, measured",
                     "value": f"{_matmul_tflops(8192):.0f} TFLOPS (MFU below is against 989)"})
    return rows


def _matmul_tflops(n: int) -> float:
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------------------------- model + data
def build(ctx: Context) -> list[Row]:
    """Build the model from its spec (random weights), save it natively, write the synthetic records."""
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.train.modeling import component_params

    spec = spec_for(ctx, ctx.sizes.spec)
    started = time.perf_counter()
    model, processor = build_model(spec)
    built = time.perf_counter() - started
    save_model(model, processor, ctx.model_dir)
    image_tokens = (spec.vision.image_size // spec.vision.patch_size) ** 2
    _write_records(ctx, processor.tokenizer, image_tokens)
    params = component_params(model)
    vision, text = spec.vision, spec.text
    return [
        {"part": "vision tower", "size": params["vision"]["total"],
         "detail": f"CLIP ViT {vision.num_layers}x{vision.hidden_size}, {vision.image_size} px / "
                   f"{vision.patch_size}, {image_tokens} image tokens"},
        {"part": "projector", "size": params["projector"]["total"], "detail": spec.projector},
        {"part": "LLM decoder", "size": params["llm"]["total"],
         "detail": f"{text.family} {text.num_layers}x{text.hidden_size}, {text.num_heads} heads / "
                   f"{text.num_kv_heads} KV, MLP {text.intermediate_size}"},
        {"part": "LM head (tied to the embeddings)", "size": params["head"]["total"],
         "detail": f"vocabulary {len(processor.tokenizer)} (SmolLM2's tokenizer)"},
        {"part": "all", "size": sum(p.numel() for p in model.parameters()),
         "detail": f"random weights, saved as {spec.dtype}; built in {built:.0f} s on the CPU"},
        _check_data(ctx),
    ]


def _check_data(ctx: Context) -> Row:
    """`medvl train`'s data check, done once here; the training sections reuse it (same fingerprint)."""
    from medvl.train.config import TrainConfig
    from medvl.train.modeling import load_processor
    from medvl.train.runner import prepare_data

    config = TrainConfig.model_validate({"model": {"path": str(ctx.model_dir)}, "data": {
        "sources": [{"path": str(ctx.data)}], "max_length": ctx.sizes.max_length}})
    report, *_ = prepare_data(config, load_processor(config.model), ctx.work, progress=False)
    tokens = report.sources[0].summary()["tokens"]
    return {"part": "training data", "size": f"{report.valid} records",
            "detail": f"synthetic, 2 turns about a VQA-RAD image; {report.rejected} rejected; tokens per "
                      f"record mean {tokens['mean']:.0f}, p95 {tokens['p95']}, max {tokens['max']}"}


def _write_records(ctx: Context, tokenizer: Any, image_tokens: int) -> None:
    """LLaVA records of 2 question/answer turns about a real VQA-RAD image, lengths from `Sizes.tokens`."""
    images = sorted((ctx.vqa_rad / "images").glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no VQA-RAD images under {ctx.vqa_rad / 'images'}")
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    rng = random.Random(0)

    def text(budget: int) -> str:
        words: list[str] = []
        while budget > 0:
            words.append(rng.choice(WORDS))
            budget -= cost[words[-1]]
        return " ".join(words)

    ctx.data.parent.mkdir(parents=True, exist_ok=True)
    with ctx.data.open("w", encoding="utf-8") as sink:
        for index in range(ctx.sizes.records):
            budget = rng.randint(*ctx.sizes.tokens) - image_tokens - 40  # 40: chat markup and questions
            context, first, second = text(budget * 2 // 5), text(budget * 3 // 10), text(budget * 3 // 10)
            conversations = [
                {"from": "human", "value": f"<image>\n{context}\n{rng.choice(QUESTIONS)}?"},
                {"from": "gpt", "value": first},
                {"from": "human", "value": f"{rng.choice(QUESTIONS)}?"},
                {"from": "gpt", "value": second}]
            record = {"id": f"synthetic-{index}", "image": str(images[index % len(images)]),
                      "conversations": conversations}
            sink.write(json.dumps(record) + "\n")
