"""Serving client apps: the request/response contract (:mod:`.contract`), the scorer that routes
to the model's endpoint (:mod:`.scorer`) and the endpoint activity it records (:mod:`.activity`)."""
