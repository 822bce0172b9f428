"""The pipeline's stages, each a long-running trio task started by the supervisor."""
