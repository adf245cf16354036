"""Shared pytest setup: where the data lives and a throwaway cache for every test session."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The shared, read-only data folder sits beside the checkout in our workspace (../shared/data).
# Set at import time so that modules imported during collection already see it.
if "LVMKIT_DATA" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["LVMKIT_DATA"] = str(REPO.parent / "shared" / "data")


@pytest.fixture(scope="session", autouse=True)
def _lvmkit_cache(tmp_path_factory):
    "Give the session a throwaway LVMKIT_CACHE unless the caller chose one."
    if "LVMKIT_CACHE" in os.environ:
        yield Path(os.environ["LVMKIT_CACHE"]); return
    path = tmp_path_factory.mktemp("lvmkit_cache")
    os.environ["LVMKIT_CACHE"] = str(path)
    yield path
    os.environ.pop("LVMKIT_CACHE", None)


@pytest.fixture(autouse=True)
def _seed_every_test():
    "This torch build seeds its global generator randomly in each process: seed every test so the suite is repeatable."
    import random
    import numpy as np
    import torch
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    yield
