"""Training: pretraining (the trainer, its jitted step) and fine-tuning (`finetune`), the step
loop they share (`loop`), checkpoints, sharding, multi-process start-up, metric writing and
the in-training evaluators' hook."""
