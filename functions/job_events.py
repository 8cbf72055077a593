"""job_events trigger (under construction)."""

import azure.functions as func

bp = func.Blueprint()
