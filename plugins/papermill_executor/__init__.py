"""Built-in plugin: papermill_executor."""
