"""``focalfast.backend_status``: every backend with the reason it cannot run (None where it can)."""

import torch

import focalfast
from focalfast import backends


def test_backend_status_gives_each_backends_reason():
    for device in ("cpu", "cuda", None):
        status = focalfast.backend_status(device)
        assert tuple(status) == focalfast.BACKENDS
        assert status == {name: backends.unavailable_reason(name, device) for name in focalfast.BACKENDS}
        assert [name for name, reason in status.items() if reason is None] == focalfast.available_backends(device)
    assert focalfast.backend_status("cpu")["reference"] is None
    assert "CUDA tensors" in focalfast.backend_status("cpu")["cuda"]
    if not torch.cuda.is_available():
        assert focalfast.backend_status("cuda")["cuda"] == "no CUDA GPU is visible to PyTorch"
