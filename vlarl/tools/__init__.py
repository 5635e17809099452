"""Commands that inspect rather than train: bench, doctor, demo/expert."""
