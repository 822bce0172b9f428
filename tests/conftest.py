"""Test configuration: shared fixtures live in ``tests/helpers``."""

pytest_plugins = [
    "helpers.markers",
    "helpers.fixtures",
    "helpers.http_engines",
    "helpers.daemon",
    "helpers.kafka",
    "helpers.azurite",
    "helpers.dfs",
    "helpers.hypothesis_profile",
    "helpers.sftp",
    "pytester",  # tests/test_markers.py runs pytest inside pytest
]
