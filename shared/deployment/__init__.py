"""Job events -> model registration -> deployment started, and the reconcile loop that finishes
whatever an event started or missed."""
