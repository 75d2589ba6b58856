"""Test-wide settings: everything runs offline, on small seeded inputs."""

import os
import tempfile

# No network here: make hub libraries fail fast instead of retrying.
for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Kernel builds made on demand (the Triton variant from a checkout) go to a temporary cache, not ~/.cache.
os.environ.setdefault("CGSPN_KERNEL_CACHE", tempfile.mkdtemp(prefix="cgspn-kernels-"))
