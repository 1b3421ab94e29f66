"""Evaluation of medical VQA models: protocols, metrics, scorers, backends, runs, judges.

Benchmarks (loaders, prompts, the registry) live in `medvl.benchmarks`, shared with training.

- `config`: `EvalConfig` (benchmark, backend, generation, prompt, images, scorers).
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
