"""lakeferry built-in plugin: delta (placeholder)."""
