"""lakeferry built-in plugin: spool (placeholder)."""
