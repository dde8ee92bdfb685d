"""Built-in plugin: evidently_drift."""
