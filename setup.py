"""Wheel builds ship the kernel package: its sources as ``cgspn/_kernels`` and its Triton build.

Metadata lives in pyproject.toml; this file only extends ``build_py`` so that a wheel (or a
non-editable ``pip install .``) holds ``cgspn/_kernels/{build.py, build.toml, csrc/, torch-ext/}``
(for ``cgspn kernels build``) and the prebuilt ``cgspn/_kernels/build/torch-universal/`` (the
Triton backend, found by ``cgspn.kernel_loader`` without building anything). Editable installs
use ``kernels_src/`` in place.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNEL_SOURCES = Path(__file__).resolve().parent / "kernels_src"
SHIPPED = ("build.py", "build.toml", "csrc", "torch-ext")


class BuildPyWithKernels(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "cgspn" / "_kernels"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in SHIPPED:
            source = KERNEL_SOURCES / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target / name)
        spec = importlib.util.spec_from_file_location("cgspn_kernel_build", target / "build.py")
        build_script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build_script)
        build_script.build_universal(target / "build")


setup(cmdclass={"build_py": BuildPyWithKernels})
