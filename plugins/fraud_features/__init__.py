"""Built-in plugin: fraud_features."""
