"""Azure Functions entry point: create the app and register one Blueprint per trigger module."""

import azure.functions as func

from functions import dashboard, followup, janitor, on_job_event, prepare_chat_data, reconcile, scoring, submissions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for module in (prepare_chat_data, on_job_event, reconcile, scoring, janitor, dashboard, followup, submissions):
    app.register_functions(module.bp)
