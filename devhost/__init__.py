"""The local stack: Azurite management and a local Azure Functions host (Core Tools stand-in)."""
