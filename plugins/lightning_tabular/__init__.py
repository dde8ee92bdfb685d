"""Built-in plugin: lightning_tabular."""
