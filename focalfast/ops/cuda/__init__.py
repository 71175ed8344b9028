"""The CUDA C++ backend: kernels in ``csrc/``, built by ``extension``, op in ``focal_modulation``.

Importing this package builds nothing; ``extension.load()`` does, on first use of the backend.
"""
