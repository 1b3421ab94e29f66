"""Medical VQA benchmarks, shared by training (fine-tuning data) and evaluation: each release read as
published into `VQAItem`s, the prompts they are asked with, and the registry that finds them by name.

    load_benchmark("vqa_rad", root, split="test") → BenchmarkData

- `base`: the item model (`VQAItem`, `BenchmarkData`, `BenchmarkError`) and the loaders' helpers;
  `VQAItem.to_record` makes the LLaVA conversation record (`medvl.records.make_record`).
- `prompts`: HuatuoGPT-Vision's multiple-choice prompt (`choice_prompt`) and the default prompt.
- `registry`: `register_benchmark`, `get_benchmark`, `load_benchmark`, `locate_benchmark` (a split's question
  files, found without reading them), `check_benchmark` (those files read, not their images, for what a load
  would fail on), `BENCHMARKS`; `checks`: the helpers of each loader's `check`.
- `contamination`: which training records show a benchmark's images or repeat its questions (curation's
  decontamination and `medvl data check --against`), with `near_images` (near-duplicate image search).
- one module per release, each registering its loader:

| name          | release and layout                                                              |
|---------------|---------------------------------------------------------------------------------|
| `vqa_rad`     | `VQA_RAD Dataset Public.json` + image folder; test = phrase_type test_freeform/test_para |
| `slake`       | SLAKE 1.0 `train/validate/test.json` + `imgs/xmlabN/source.jpg`; `lang` en/zh/all |
| `pathvqa`     | original `qas/<split>/<split>_qa.pkl` + `images/<split>/`, or the HF parquet (`data/<split>-*.parquet`) |
| `pmc_vqa`     | PMC-VQA CSV (`Figure_path, Question, Answer, Choice A..D, Answer_label`) + `images/` |
| `omnimedvqa`  | OmniMedVQA `QA_information/Open-access/*.json` + `Images/`                     |
| `mmmu_med`    | MMMU parquet per subject, the five Health & Medicine subjects                   |
| `huatuo_eval` | HuatuoGPT-Vision's `medical_multimodel_evaluation_data.json` + `images/`       |
| `llava_jsonl` | any LLaVA-format JSONL/JSON (answer = the gpt turn)                              |

How to add one: docs/architecture.md.
"""

from medvl.benchmarks.base import LETTERS, BenchmarkData, BenchmarkError, VQAItem, closed_as_choice, yes_no_answer
from medvl.benchmarks.prompts import PromptStyle, choice_prompt, default_prompt
from medvl.benchmarks.registry import (
    BENCHMARKS,
    Benchmark,
    check_benchmark,
    get_benchmark,
    load_benchmark,
    locate_benchmark,
    register_benchmark,
)

__all__ = [
    "BENCHMARKS",
    "LETTERS",
    "Benchmark",
    "BenchmarkData",
    "BenchmarkError",
    "PromptStyle",
    "VQAItem",
    "check_benchmark",
    "choice_prompt",
    "closed_as_choice",
    "default_prompt",
    "get_benchmark",
    "load_benchmark",
    "locate_benchmark",
    "register_benchmark",
    "yes_no_answer",
]
