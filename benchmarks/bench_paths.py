"""Where the benchmarks find the repository, the shipped models and data, and where they write."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SINK_MODIFIER_SHARED", REPO.parent / "shared"))  # ../shared beside the repo
TINY_DLM = SHARED / "models" / "tiny-dlm"
TINY_AR = SHARED / "models" / "tiny-ar"
DATA = SHARED / "data"
CORPUS = DATA / "corpus.txt.gz"  # calibration only
HELDOUT = DATA / "heldout.txt.gz"
HANDBOOK = DATA / "handbook.txt.gz"
RECIPES = REPO / "recipes"
RESULTS = REPO / "benchmarks" / "results"
