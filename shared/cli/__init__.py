"""The command line (``python -m shared.cli``): every command and all printing."""
