"""Usage history: GPU-hours held and busy, per owner, container and GPU, in SQLite."""
