"""medvl.curate: PubMedVision- and LLaVA-Med-style training data from figure–caption pairs.

`medvl curate run CONFIG` (see `docs/curation.md`) runs ingest → text filter → image filter →
dedup → sampling → generation → release files as datatrove pipelines (`pipeline.run_curation`),
resumably, on the local, Ray or Slurm executor. Modules, in pipeline order: `config`, `ingest`
(the reader; `ingest_formats`: the formats; `ingest_document`: the normalised record),
`vocab`, `filters`, `classifier` + `label` (the medical-image classifier), `dedup`, `sampling`,
`prompts` + `generate` + `postprocess` + `generate_step`, `finalize` + `report`, `estimate`,
`store` (the output folder), `mock` (a deterministic stand-in model for the mock server), `cli`.
"""
