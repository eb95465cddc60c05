"""Pretraining: the trainer, its jitted step, checkpoints, sharding, multi-process
start-up, metric writing and the in-training evaluators' hook."""
