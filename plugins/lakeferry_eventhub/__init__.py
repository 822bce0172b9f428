"""lakeferry built-in plugin: eventhub (being built)."""
