"""Built-in plugin: sqlite_online."""
