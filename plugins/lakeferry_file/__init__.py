"""lakeferry built-in plugin: file (placeholder)."""
