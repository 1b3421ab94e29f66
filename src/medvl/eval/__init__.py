"""Evaluation of medical VQA models: benchmarks, protocols, metrics, scorers, backends, runs, judges.

- `benchmarks`: loaders for VQA-RAD, SLAKE, PathVQA, PMC-VQA, OmniMedVQA, MMMU-Med, HuatuoGPT-Vision's
  combined file and any LLaVA JSONL → `VQAItem`s (also used to build fine-tuning data).
- `metrics`, `choice`: medvl's metrics and multiple-choice extraction; `compat`: the reference
  scorers' rules, quirks included (LLaVA-Med by version, BLEU); `scorers`: all of them by name.
- `stats`: 95% intervals (Wilson, bootstrap) and paired tests (exact McNemar, paired bootstrap);
  `compare`: two runs' records compared item by item, and `medvl eval compare`.
- `prompts`, `backends`, `baselines`, `runner`: asking a model (local, OpenAI-compatible, vLLM) or a
  baseline (majority, question-only, shuffled images), resumable and data-parallel; `report`,
  `render`, `plots`: scores, breakdowns, the console line, markdown, plots.
- `judge`: LLM judges (LLaVA-Med's chat protocol in both orders; open-answer correctness).
- `cli`: `medvl eval run | score | compare | list | inspect | judge-open | judge-chat`.

See docs/evaluation.md.
"""
