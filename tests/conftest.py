"""Test settings: one torch thread (the machine is shared; many small ops run faster single
threaded) and a short hypothesis profile with no deadline (first calls compile kernels)."""
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
