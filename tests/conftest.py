"""Test-wide settings: everything runs offline, on small seeded inputs."""

import os

# No network here: make hub libraries fail fast instead of retrying.
for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
