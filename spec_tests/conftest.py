"""Shared pytest configuration for the spec test suite.

Hypothesis profiles: ``default`` for local runs, ``ci`` (selected when the ``CI`` environment
variable is set) derandomised so that CI runs are reproducible. Jitted kernels compile on first
call, so no test has a deadline.
"""

import os

from hypothesis import HealthCheck, settings

# Flower (the engine's tests, test_flower*.py) reads these when first imported: no telemetry,
# no update check, in this process and every process it starts.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    derandomize=True,
    database=None,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI")
                      else os.environ.get("HYPOTHESIS_PROFILE", "default"))
