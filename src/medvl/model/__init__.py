"""Model core: build, save, load and generate with LLaVA-style models in transformers' native
`LlavaForConditionalGeneration` format, chat templates, and conversion of legacy LLaVA checkpoints."""
