"""Test doubles shared by the test modules: one in-memory ML workspace (:mod:`.workspace`).

The Azure ML HTTP fakes (the real SDK against intercepted HTTP) are in ``tests/azureml_fakes.py``.
"""
