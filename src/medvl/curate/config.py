"""`CurateConfig`: one typed YAML config drives `medvl curate run`, one section per stage.

Every threshold is an option here with the PubMedVision / LLaVA-Med default (see
`docs/curation.md` for the table). Relative paths in a config file are resolved against the
folder of that file (`resolve_paths`), so a shipped config runs from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from medvl.config import Config, load_config
from medvl.llm.config import LLMConfig

__all__ = [
    "SourceConfig",
    "TextFilterConfig",
    "ImageFilterConfig",
    "DedupConfig",
    "SampleConfig",
    "ConceptConfig",
    "ReformatConfig",
    "SelfInstructConfig",
    "GenerateConfig",
    "EngineConfig",
    "CurateConfig",
    "load_curate_config",
]

SourceFormat = Literal["pmc_jsonl", "llava_med", "pairs", "folder"]


class SourceConfig(Config):
    """One input: a file (or folder) of figure–caption records in a known format."""

    format: SourceFormat
    path: str = Field(
        description="input file (pmc_jsonl, llava_med, pairs: .jsonl/.json/.csv/.tsv) or folder"
    )
    image_root: str | None = Field(
        None,
        description="folder image paths are relative to (default: the input file's folder; "
        "pmc_jsonl: <folder>/figures; llava_med: <folder>/images)",
    )
    name: str | None = Field(None, description="source label written on every record (default: file stem)")
    licence: str | None = Field(None, description="licence for records whose input carries none")
    # `pairs` (PMC-OA / ROCO style) column names; `image` may hold a list for multi-panel figures.
    image_key: str = "image"
    caption_key: str = "caption"
    id_key: str | None = Field(None, description="pairs: id column (default: the image file stem)")
    mentions_key: str | None = None
    image_suffix: str = Field(
        "", description="pairs: appended to the image column (ROCO CSVs hold ids: '.jpg')"
    )
    csv_delimiter: str | None = Field(None, description="pairs CSV delimiter (default ',' or tab for .tsv)")


class TextFilterConfig(Config):
    """Caption length bounds and the medical-vocabulary test (PubMedVision's text filter)."""

    enabled: bool = True
    min_caption_words: int = Field(5, ge=0)
    max_caption_words: int = Field(1000, ge=1)
    vocabulary: str | None = Field(
        None, description="term file (one term a line, # comments); default: shipped list"
    )
    min_medical_terms: int = Field(2, ge=0, description="distinct vocabulary terms required")
    count_terms_in: Literal["caption", "caption_and_mentions"] = "caption_and_mentions"


class ImageFilterConfig(Config):
    """Decodability, size and shape bounds, and the medical-image classifier (PubMedVision)."""

    enabled: bool = True
    min_side: int = Field(336, ge=1, description="PubMedVision drops images smaller than 336x336")
    max_aspect_ratio: float = Field(5.0, ge=1.0, description="long side / short side")
    min_pixels: int = Field(0, ge=0)
    max_pixels: int = Field(60_000_000, ge=1, description="larger images are rejected (decompression bombs)")
    max_images: int = Field(16, ge=1, description="records with more panels are rejected")
    classifier: str | None = Field(
        None, description="folder saved by `medvl curate train-classifier`; unset: skipped"
    )
    classifier_threshold: float | None = Field(None, ge=0, le=1, description="default: the one saved with it")


class PhashConfig(Config):
    enabled: bool = True
    max_distance: int = Field(4, ge=0, le=32, description="Hamming distance between 64-bit pHashes")


class SemanticConfig(Config):
    """SemDeDup on captions: embed → faiss k-means → within-cluster cosine ≥ 1 − eps."""

    enabled: bool = True
    model: str | None = Field(
        None,
        description="sentence-transformers folder (default: all-MiniLM-L6-v2, offline); "
        "'hashing': a weight-free word-hashing embedder for tests and benchmarks",
    )
    eps: float = Field(0.05, gt=0, lt=1)
    cluster_size: int = Field(1000, ge=2, description="target records per k-means cluster")
    kmeans_iterations: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    seed: int = 0


class DedupConfig(Config):
    enabled: bool = True
    exact_image: bool = True
    exact_caption: bool = True
    phash: PhashConfig = PhashConfig()
    semantic: SemanticConfig = SemanticConfig()


class SampleConfig(Config):
    """Balancing by a metadata field with per-class caps (LLaVA-Med: round-robin over 5 domains)."""

    by: Literal["none", "domain", "modality", "source"] = "none"
    classes: list[str] | None = Field(None, description="round-robin order (default: sorted class names)")
    cap_per_class: int | None = Field(None, ge=1)
    max_total: int | None = Field(None, ge=1, description="LLaVA-Med: 60000")
    shuffle: bool = Field(
        True, description="seeded random pick within a class; false: input order (LLaVA-Med)"
    )
    seed: int = 0


class ConceptConfig(Config):
    """LLaVA-Med stage 1: describe-the-image instruction, caption as the answer."""

    enabled: bool = True
    cutoff_words: int = Field(30, ge=1, description="captions shorter than this get a concise instruction")
    strip_figure_label: bool = Field(True, description="drop a leading 'Figure 3.' from the answer")
    seed: int = 0


class _LLMGenerator(Config):
    """A generator that needs an LLM endpoint when enabled."""

    section: ClassVar[str]
    enabled: bool = False
    llm: LLMConfig | None = None
    max_mentions: int = Field(5, ge=0, description="in-text mentions put in the prompt")
    seed: int = 0

    @model_validator(mode="after")
    def _has_llm(self) -> "_LLMGenerator":
        if self.enabled and self.llm is None:
            raise ValueError(
                f"generate.{self.section}.enabled needs generate.{self.section}.llm (base_url, model)"
            )
        return self


class ReformatConfig(_LLMGenerator):
    """PubMedVision: an MLLM sees image(s) + caption + mentions, writes Alignment and Instruction VQA."""

    section: ClassVar[str] = "reformat"
    image_max_side: int = Field(1024, ge=64, description="images are downscaled to this before upload")
    roles: list[str] | None = Field(None, description="default: every role of prompts/roles.txt")
    json_mode: bool = Field(True, description="send response_format json_object (OpenAI, vLLM support it)")


class SelfInstructConfig(_LLMGenerator):
    """LLaVA-Med: a text-only model writes a multi-turn conversation from caption + mentions."""

    section: ClassVar[str] = "self_instruct"
    use_inline_mentions: bool = True
    few_shot: int = Field(
        4, ge=0, description="few-shot examples taken from prompts/self_instruct_examples.json"
    )


class GenerateConfig(Config):
    concept: ConceptConfig = ConceptConfig()
    reformat: ReformatConfig = ReformatConfig()
    self_instruct: SelfInstructConfig = SelfInstructConfig()
    window: int = Field(4, ge=1, description="records in flight per task = window x llm.max_concurrency")


class RayConfig(Config):
    address: str | None = Field(None, description="ray cluster address; unset: a local cluster is started")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2.0, gt=0)


class SlurmConfig(Config):
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2.0, gt=0)
    venv_path: str | None = None
    sbatch_args: dict[str, str] = {}


class EngineConfig(Config):
    """datatrove executor: `local` (default), `ray` (cluster via ray.init) or `slurm` (sbatch arrays)."""

    executor: Literal["local", "ray", "slurm"] = "local"
    tasks: int = Field(1, ge=1, description="shards of the input; each sharded stage runs this many tasks")
    workers: int = Field(1, ge=1, description="tasks run at the same time")
    ray: RayConfig = RayConfig()
    slurm: SlurmConfig = SlurmConfig()


class CurateConfig(Config):
    sources: list[SourceConfig] = Field(min_length=1)
    limit: int | None = Field(None, ge=1, description="read at most this many records per source (debugging)")
    text_filter: TextFilterConfig = TextFilterConfig()
    image_filter: ImageFilterConfig = ImageFilterConfig()
    dedup: DedupConfig = DedupConfig()
    sample: SampleConfig = SampleConfig()
    generate: GenerateConfig = GenerateConfig()
    output_dir: str | None = Field(None, description="the output folder (or `--out`)")
    image_mode: Literal["hardlink", "copy", "symlink"] = Field(
        "hardlink", description="hardlink falls back to copy"
    )
    engine: EngineConfig = EngineConfig()


def load_curate_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> CurateConfig:
    """Load a curate config; relative paths in it are taken relative to the config file's folder."""
    config = load_config(CurateConfig, path, overrides)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return resolve_paths(config, base)


def resolve_paths(config: CurateConfig, base: Path) -> CurateConfig:
    """Return a copy with every path option made absolute against `base`."""

    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / Path(value).expanduser()).resolve())

    sources = [
        s.model_copy(update={"path": absolute(s.path), "image_root": absolute(s.image_root)})
        for s in config.sources
    ]
    text = config.text_filter.model_copy(update={"vocabulary": absolute(config.text_filter.vocabulary)})
    image = config.image_filter.model_copy(update={"classifier": absolute(config.image_filter.classifier)})
    model = config.dedup.semantic.model
    semantic = config.dedup.semantic.model_copy(
        update={"model": model if model == "hashing" else absolute(model)}
    )
    dedup = config.dedup.model_copy(update={"semantic": semantic})
    return config.model_copy(
        update={
            "sources": sources,
            "text_filter": text,
            "image_filter": image,
            "dedup": dedup,
            "output_dir": absolute(config.output_dir),
        }
    )
