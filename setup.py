"""hpcflow: sampling lattice gauge theory in 2, 3 and 4 dimensions (package metadata)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "hpcflow" / "_version.py").read_text()
).group(1)

setup(
    name="hpcflow",
    version=VERSION,
    description=(
        "Sampling U(1) and SU(N) lattice gauge theories in 2-4D with gauge-equivariant "
        "normalizing flows, trained with MPI on supercomputers"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hpcflow", "hpcflow.*"]),
    include_package_data=True,
    # the fused CPU kernels' sources, compiled on first use (hpcflow/kernels/__init__.py)
    package_data={"hpcflow.kernels": ["csrc/*.cpp", "csrc/*.h"]},
    install_requires=[
        # A range: clusters bring their own CUDA/ROCm/XPU builds. The CPU install path
        # (Makefile) pins torch==2.13.0; the whole suite also ran with 2.11.0 and, but for
        # the compiled path and the gloo backend, with 2.5.1 (README.md, "Other torch builds").
        "torch>=2.5,<3",
        "numpy>=1.24",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "h5py>=3.8",
        "tqdm>=4.60",
        # torch's C++ extension loader builds the fused spline kernel with it (a C++ compiler
        # is needed too; without one, distributed.splines: auto falls back to tensor operations)
        "ninja>=1.11",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        # Horovod needs a compiler wrapper and build flags: use launch/install_horovod.sh.
        "horovod": ["horovod==0.28.1"],
        "plot": ["matplotlib>=3.6"],
        # pdoc builds docs/api (make docs); the tests build it too, to keep it building.
        "test": ["pytest>=7", "ruff>=0.5", "pdoc>=14", "psutil>=5.9"],  # psutil: job-script tests
        "docs": ["pdoc>=14"],
    },
    entry_points={"console_scripts": ["hpcflow = hpcflow.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
