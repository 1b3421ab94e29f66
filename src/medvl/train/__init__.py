"""Training: `medvl train` (stages align / instruct / finetune on the transformers Trainer) and
`medvl data` (validate datasets, convert benchmark train splits). See docs/training.md."""
