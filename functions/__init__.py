"""Trigger modules: each exposes ``bp`` (a func.Blueprint); handlers only translate trigger <-> domain."""
