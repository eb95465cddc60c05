"""The method's pure numerics: masking, the losses, EMA, schedules, the optimiser."""
