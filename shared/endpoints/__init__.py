"""Online endpoints: the only owner of endpoint and route records (naming, deploy, activate,
retire, delete, finalise), which endpoint serves a model, and version ordering."""
