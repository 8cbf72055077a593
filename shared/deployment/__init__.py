"""Job events -> the job's outcome recorded -> model registration -> deployment started
(:mod:`.event_payloads` parses the events, :mod:`.job_outcome` acts on them); the reconcile loop
(:mod:`shared.reconcile`) finishes whatever an event started or missed."""
