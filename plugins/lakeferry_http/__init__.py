"""lakeferry built-in plugin: http (placeholder)."""
