"""Built-in plugin: litestar_serving."""
