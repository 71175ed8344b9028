"""Shared test setup.

Without a CUDA GPU the Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be
set before anything imports triton, so it is set here, at collection time.
"""

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where PyTorch sees no CUDA GPU."""
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to PyTorch)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ext():
    """The CUDA extension module (prebuilt by `pip install -e .`, else built now); skipped without nvcc."""
    from focalfast.ops.cuda import extension

    reason = extension.unavailable_reason()
    if reason is None:
        return extension.load()
    if extension.find_nvcc() is None:
        pytest.skip(f"the CUDA extension is unavailable and there is no nvcc to build it: {reason}")
    pytest.fail(f"nvcc is here but the CUDA extension is unavailable: {reason}")
