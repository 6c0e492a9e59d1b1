"""Where the shared, read-only test material lives (never copied into the repository)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
CONFORMANCE = SHARED / "conformance"
SHIPPED_MODEL = REPO / "Resources" / "Models" / "hermes-mini.safetensors"  # the embedded default
ACDC = DATA / "mr_cine_heart_acdc"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test material not found: {path}")
    return path
