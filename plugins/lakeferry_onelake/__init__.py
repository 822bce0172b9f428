"""lakeferry built-in plugin: onelake (being built)."""
