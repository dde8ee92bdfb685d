"""Built-in plugin: duckdb_offline."""
