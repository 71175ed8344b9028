"""Build script: the pure-Python package, plus the CUDA extension when nvcc is present."""

from setuptools import setup

setup()
