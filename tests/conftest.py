"""Test settings: one torch thread (the machine is shared; many small ops run faster single
threaded) and a short hypothesis profile with no deadline (first calls compile kernels)."""
import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile("kaol", deadline=None, max_examples=20, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kaol")


def pytest_configure(config) -> None:
    """Silence torch's beta notices about sparse CSR tensors (``kaol.fast`` filters them too,
    but pytest resets the warning filters per test)."""
    for msg in (".*Sparse CSR tensor support is in beta.*", ".*Sparse invariant checks are implicitly disabled.*"):
        config.addinivalue_line("filterwarnings", f"ignore:{msg}:UserWarning")


def pytest_addoption(parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (each starts fresh Python processes, Ray or Dask); "
                          "scripts/test.sh does")


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the tests marked ``slow`` unless ``--slow``: everyday ``pytest tests`` stays short."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: starts fresh processes; run with --slow (scripts/test.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
