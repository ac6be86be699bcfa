"""Pytest set-up shared by tests and doctests.

Eight host CPU devices are requested before JAX is imported so that sharding
tests can build a device mesh; it must happen here, before any test module
imports ``jax``.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
