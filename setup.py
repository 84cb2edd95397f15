"""Build script: pure-Python package (compiled extensions are added by the CPU engine)."""

from setuptools import setup

setup()
