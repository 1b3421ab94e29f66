"""`CurateConfig`: one typed YAML config drives `medvl curate run`, one section per stage.

Every threshold is an option here with the PubMedVision / LLaVA-Med default (see
`docs/curation.md` for the table). The filters' sections (`filter.<name>`) are declared by the
filters themselves (the `medvl.curate.filters.FILTERS` registry). Relative paths in a config file
are resolved against the folder of that file (`resolve_paths`), so a shipped config runs from any
working directory; those given by command-line overrides against the working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from medvl.benchmarks.near_images import NearImageConfig
from medvl.config import Config, load_config
from medvl.curate.filters import FilterConfig, filter_sections
from medvl.llm.config import LLMConfig

__all__ = [
    "SourceConfig",
    "SemanticConfig",
    "DedupConfig",
    "BenchmarkRef",
    "DecontaminateConfig",
    "SampleConfig",
    "ConceptConfig",
    "ReformatConfig",
    "SelfInstructConfig",
    "GenerateConfig",
    "EngineConfig",
    "CurateConfig",
    "load_curate_config",
]

SourceFormat = Literal["pmc_jsonl", "llava_med", "pairs", "roco", "folder"]


class SourceConfig(Config):
    """One input: a file (or folder) of figure–caption records in a known format."""

    format: SourceFormat
    path: str = Field(
        description="input file (pmc_jsonl, llava_med, pairs: .jsonl/.json/.csv/.tsv; roco: captions.txt) "
        "or folder"
    )
    image_root: str | None = Field(
        None,
        description="folder image paths are relative to (default: the input file's folder; "
        "pmc_jsonl: <folder>/figures; llava_med, roco: <folder>/images)",
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


class SemanticConfig(Config):
    """Semantic caption dedup: faiss nearest neighbours (cosine >= 1 - eps), confirmed by a clinical check."""

    enabled: bool = True
    model: str | None = Field(
        None,
        description="sentence-transformers folder (default: all-MiniLM-L6-v2, offline); "
        "'hashing': a weight-free word-hashing embedder for tests and benchmarks",
    )
    eps: float = Field(0.12, gt=0, lt=1, description="duplicate candidates: cosine >= 1 - eps")
    candidates: int = Field(10, ge=1, description="nearest earlier captions checked per caption")
    verify: bool = Field(
        True, description="refuse merges across clinical differences (numbers, side, pre/post, negation, ...)"
    )
    batch_size: int = Field(128, ge=1)


class DedupConfig(Config):
    enabled: bool = True
    exact_image: bool = True
    exact_caption: bool = True
    near_image: NearImageConfig = NearImageConfig()
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
    roles: list[str] | None = Field(None, min_length=1, description="default: every role of prompts/roles.txt")
    json_mode: bool = Field(True, description="send response_format json_object (OpenAI, vLLM support it)")

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: list[str] | None) -> list[str] | None:
        """Names of prompts/roles.txt: an unknown one is a ValueError naming it and the known ones."""
        if roles is not None:
            from medvl.curate.prompts import read_roles

            read_roles(roles)
        return roles


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

    @model_validator(mode="after")
    def _slurm_has_a_partition(self) -> "EngineConfig":
        if self.executor == "slurm" and self.slurm.partition is None:
            raise ValueError("engine.executor=slurm needs engine.slurm.partition: the partition to submit the "
                             "stages to (sinfo lists them)")
        return self


class BenchmarkRef(Config):
    """A benchmark split to check training data against (loaded by medvl's benchmark loaders)."""

    name: str = Field(description="a benchmark name of `medvl eval` (vqa_rad, slake, pathvqa, ...)")
    root: str
    split: str = "test"
    options: dict[str, Any] = {}


class DecontaminateConfig(Config):
    """Drop training records whose images or question/answer text match a benchmark item."""

    enabled: bool = False
    benchmarks: list[BenchmarkRef] = []
    image: NearImageConfig = NearImageConfig()
    ngram: int = Field(8, ge=1, description="word n-grams compared between benchmark Q+A and training text")
    min_text_overlap: float = Field(
        0.5, gt=0, le=1, description="share of a benchmark item's n-grams found in one training record"
    )


class CurateConfig(Config):
    sources: list[SourceConfig] = Field(min_length=1)
    limit: int | None = Field(None, ge=1, description="read at most this many records per source (debugging)")
    filter: dict[str, SerializeAsAny[FilterConfig]] = Field(
        default_factory=lambda: filter_sections({}),
        description="one section per registered filter (licence, text, medical_text, image)",
    )
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    sample: SampleConfig = SampleConfig()
    generate: GenerateConfig = GenerateConfig()
    output_dir: str | None = Field(None, description="the output folder (or `--out`)")
    image_mode: Literal["hardlink", "copy", "symlink"] = Field(
        "hardlink", description="hardlink falls back to copy"
    )
    engine: EngineConfig = EngineConfig()

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("text_filter", "filter.text"), ("image_filter", "filter.image")):
                if old in data:
                    raise ValueError(f"`{old}` is now `{new}` (same keys): rename the section")
        return data

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_sections(cls, value: Any) -> dict[str, FilterConfig]:
        return filter_sections(value)

    @property
    def needs_image_signatures(self) -> bool:
        """Whether the image filter computes near-duplicate descriptors (dedup or decontamination uses them)."""
        return (self.dedup.enabled and self.dedup.near_image.enabled) or self.decontaminate.enabled


def load_curate_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> CurateConfig:
    """Load a curate config; a relative path written in the config file is taken from the file's
    folder, one given by a command-line override (`filter.image.classifier=runs/clf`) from the
    working directory, as a shell user means it."""
    config = load_config(CurateConfig, path, overrides)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    overridden = [item.partition("=")[0].strip() for item in overrides]

    def folder_of(key: str) -> Path:
        return Path.cwd() if any(key == k or key.startswith(k + ".") for k in overridden) else base

    return resolve_paths(config, folder_of)


def resolve_paths(config: CurateConfig, folder_of: Callable[[str], Path]) -> CurateConfig:
    """Return a copy with every path option made absolute against `folder_of(its dotted key)`."""

    def absolute(value: str | None, key: str) -> str | None:
        return None if value is None else str((folder_of(key) / Path(value).expanduser()).resolve())

    sources = [
        s.model_copy(update={"path": absolute(s.path, "sources"), "image_root": absolute(s.image_root, "sources")})
        for s in config.sources
    ]
    filters = {name: section.resolve_paths(lambda value, field, name=name: absolute(value, f"filter.{name}.{field}"))
               for name, section in config.filter.items()}
    model = config.dedup.semantic.model
    semantic = config.dedup.semantic.model_copy(
        update={"model": model if model == "hashing" else absolute(model, "dedup.semantic.model")}
    )
    dedup = config.dedup.model_copy(update={"semantic": semantic})
    benchmarks = [b.model_copy(update={"root": absolute(b.root, "decontaminate.benchmarks")})
                  for b in config.decontaminate.benchmarks]
    decontaminate = config.decontaminate.model_copy(update={"benchmarks": benchmarks})
    return config.model_copy(
        update={
            "sources": sources,
            "filter": filters,
            "dedup": dedup,
            "decontaminate": decontaminate,
            "output_dir": absolute(config.output_dir, "output_dir"),
        }
    )
