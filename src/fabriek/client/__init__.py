"""The Python SDK: `fabriek.Client`."""
