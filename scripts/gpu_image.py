"""What the GPU machine's image has, and whether a set of wheels completes it for the GPU check.

The GPU check (``scripts/gpu-check.sh``) runs on a lent machine with no network: Python packages
reach it only as wheels carried with the working tree (``scripts/gpu-requirements.txt``). Which
wheels to carry is decided here, on a machine without a GPU, from two facts:

* the image's packages (:data:`IMAGE_PACKAGES`), as the workplace's device notes list them
  (``KINDS.md``, read on such a machine on 2026-11-17), with the versions one session's
  ``pip list`` showed there (:data:`IMAGE_VERSIONS`, 2026-11); a package not listed there is
  one the image lacks;
* each carried wheel's own ``Requires-Dist`` (its METADATA), with the markers evaluated for the
  image's Python (:data:`IMAGE_PYTHON`, CPython 3.12 on x86-64 Linux) and no extra.

:func:`unmet_requirements` lists every requirement of a carried wheel that neither another
carried wheel nor the image meets: the wheel set is complete when it is empty. The check is
repeated on the machine itself against what is really installed there (``gpu_check.py``'s
``environment`` section), since a version the notes do not give cannot be checked here.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

#: The image's Python, as ``packaging`` markers read it (the notes: Python 3.12.3, x86-64 Linux).
IMAGE_PYTHON: dict[str, str] = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}

_IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
"""
#: Every package the image 'cuda' holds (the device notes' list, read there on 2026-11-17).
IMAGE_PACKAGES: frozenset[str] = frozenset(canonicalize_name(name) for name in _IMAGE_LIST.split())

#: The versions the notes give (one session's ``pip list`` there, 2026-11); the others are unknown.
IMAGE_VERSIONS: dict[str, str] = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tiktoken": "0.14.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}

_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass(frozen=True)
class Wheel:
    """A carried wheel: its distribution name, version and unconditional requirements."""

    name: str
    version: Version
    requires: tuple[Requirement, ...]


def read_wheel(path: str | Path) -> Wheel:
    """The name and version in a wheel's file name, its ``Requires-Dist`` from its METADATA."""
    path = Path(path)
    match = _WHEEL_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a wheel's file name")
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    requires = tuple(
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    )
    return Wheel(canonicalize_name(match["name"]), Version(match["version"]), requires)


def applies(requirement: Requirement) -> bool:
    """Whether a requirement holds on the image's Python with no extra asked for."""
    return requirement.marker is None or requirement.marker.evaluate(IMAGE_PYTHON)


def unmet_requirements(
    wheels: Iterable[Wheel],
    *,
    image: Iterable[str] = IMAGE_PACKAGES,
    image_versions: Mapping[str, str] = IMAGE_VERSIONS,
) -> list[str]:
    """Each requirement of a carried wheel that the set and the image leave unmet, as a sentence.

    A carried wheel wins over the image's copy (it comes first on ``PYTHONPATH``), so its version
    is the one checked; an image package is checked only where its version is known.
    """
    carried = {wheel.name: wheel.version for wheel in wheels}
    present = {canonicalize_name(name) for name in image}
    versions = {canonicalize_name(name): Version(v) for name, v in image_versions.items()}
    unmet = []
    for wheel in wheels:
        for requirement in filter(applies, wheel.requires):
            name = canonicalize_name(requirement.name)
            version = carried.get(name, versions.get(name))
            if name not in carried and name not in present:
                unmet.append(f"{wheel.name} needs {requirement}: neither carried nor in the image")
            elif version is not None and not requirement.specifier.contains(version, prereleases=True):
                where = "carried" if name in carried else "the image's"
                unmet.append(f"{wheel.name} needs {requirement}: {where} {name} is {version}")
    return unmet


def installed_unmet(wheels: Iterable[Wheel]) -> list[str]:
    """Each requirement of a carried wheel that what is installed here leaves unmet (run on the
    GPU machine, after the wheels were unpacked ahead of the image's packages)."""
    import importlib.metadata

    unmet = []
    for wheel in wheels:
        for requirement in filter(applies, wheel.requires):
            try:
                version = Version(importlib.metadata.version(requirement.name))
            except importlib.metadata.PackageNotFoundError:
                unmet.append(f"{wheel.name} needs {requirement}: not installed")
                continue
            if not requirement.specifier.contains(version, prereleases=True):
                unmet.append(f"{wheel.name} needs {requirement}: {requirement.name} {version} is installed")
    return unmet
