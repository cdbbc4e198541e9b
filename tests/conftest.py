"""Suite-wide fixtures. Sockets are limited to loopback for the whole suite (pytest-socket, see pyproject)."""

from __future__ import annotations

import os

# never let a test reach a cloud metadata service or real cloud credentials by accident
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")
os.environ.setdefault("NO_GCE_CHECK", "True")

# Property tests explore new examples on every local run; in CI (CI=true) they replay a fixed, derandomized
# sequence so that a submission's result is reproducible. A counterexample found locally is a real bug.
from hypothesis import settings as _hypothesis_settings  # after the environment set-up above

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
