"""Smoke test of a wheel install, run by .ci/run from outside the repository in a fresh venv.

Checks that the installed copy (not the source tree) is imported, that `cgspn kernels-info --json`
reports the Triton backend from the wheel's own torch-universal build, and that this backend
computes the reference's output (Triton's CPU interpreter: TRITON_INTERPRET=1 is set by the caller).
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

import cgspn
from cgspn import propagate_ref
from cgspn.propagation import load_backend

site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
package = Path(cgspn.__file__).resolve().parent
assert package.parent == site_packages, f"imported {package}, not the wheel in {site_packages}"

info = json.loads(subprocess.run(["cgspn", "kernels-info", "--json"], check=True, capture_output=True).stdout)
assert set(info) == {"torch", "triton", "cuda", "hub"}, info
triton = info["triton"]
assert triton["available"], triton
assert Path(triton["source"]) == package / "_kernels" / "build" / "torch-universal", triton
assert info["hub"]["source"] == "cgspn/propagation@v1", info["hub"]

z, g = torch.randn(2, 3, 5, 4), 2 * torch.randn(2, 3, 5, 80)
torch.testing.assert_close(load_backend("triton")(z, g), propagate_ref(z, g), rtol=1e-5, atol=1e-5)
print(f"wheel smoke test passed: {package}; triton from {triton['source']}", file=sys.stderr)
