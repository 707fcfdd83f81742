"""Moved to :mod:`convplat.demo`; this alias keeps ``convplat.pipeline.demo`` imports working
until their callers (cli/main.py, a few tests and benchmarks) import ``convplat.demo``."""

from convplat.demo import *  # noqa: F403
from convplat.demo import __all__  # noqa: F401
