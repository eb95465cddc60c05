"""The linear probe (the papers' protocol): task data, protocol, classifier training, reports,
and the kNN / linear evaluators run during training."""
