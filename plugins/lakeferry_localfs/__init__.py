"""lakeferry built-in plugin: localfs (placeholder)."""
