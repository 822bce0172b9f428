"""The pipeline's stages, each a long-running trio task started by the supervisor."""

STAGES = ("ingest", "download", "upload", "results")
"""Every stage, in the order an event passes them (``lakeferry run --stages`` takes a subset)."""
