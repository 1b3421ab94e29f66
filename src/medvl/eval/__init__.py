"""Evaluation of medical VQA models: benchmarks, protocols, metrics, scorers, backends, runs, judges.

- `benchmarks`: loaders for VQA-RAD, SLAKE, PathVQA, PMC-VQA, OmniMedVQA, MMMU-Med, HuatuoGPT-Vision's
  combined file and any LLaVA JSONL → `VQAItem`s (also used to build fine-tuning data).
- `metrics`, `choice`: medvl's metrics and multiple-choice extraction; `compat`: the reference
  scorers' rules, quirks included; `scorers`: all of them by name.
- `prompts`, `backends`, `baselines`, `runner`: asking a model (local, OpenAI-compatible, vLLM) or a
  baseline, resumable and data-parallel; `report`, `plots`: scores, breakdowns, markdown, plots.
- `judge`: LLM judges (LLaVA-Med's chat protocol in both orders; open-answer correctness).
- `cli`: `medvl eval run | score | compare | list | inspect | judge-open | judge-chat`.

See docs/evaluation.md.
"""
