"""Azure ML backend: the Phi-3 cookbook notebook "FineTuning_MLSDK", step by step, unattended.

Every notebook step has its place here, reshaped for an event-driven app that never waits:

======================================  ==================================================
notebook                                here
======================================  ==================================================
``MLClient.from_config`` / workspace    :attr:`AzureMLBackend.workspace` (settings or config.json)
``MLClient(registry_name="azureml")``   :attr:`AzureMLBackend.registry` (lazy: its constructor calls
                                        the registry discovery service)
``models.get(name, label="latest")``    :meth:`AzureMLBackend.foundation_model` (+ tags parsed safely,
                                        lifecycle dates: :meth:`check_foundation_model`)
compute checks, ``list_sizes()``        :meth:`AzureMLBackend.finetune_compute` (+ retired sizes; GPUs
                                        from a size table: the identity may not list sizes)
the datastore of the data               :meth:`AzureMLBackend.check_datastore`
fine-tune parameters, display name      :mod:`~shared.backends.azureml.finetune_parameters`
``@pipeline`` + ``jobs.create_or_update``  :meth:`AzureMLBackend.submit_finetune` (``jobs.stream``
                                        is replaced by the job-completed event)
``Model(path=azureml://jobs/...)``      :meth:`AzureMLBackend.register_model`
endpoint, deployment "demo", traffic    :meth:`begin_deploy` / :meth:`get_endpoint` / :meth:`set_traffic`
``online_endpoints.begin_delete``       :meth:`begin_delete_endpoint`
"Review training metrics"               :meth:`AzureMLBackend.job_steps` (run history: steps, times,
                                        errors, metrics), used by :meth:`get_job`
======================================  ==================================================

The deployment state machine (every call returns at once; Azure does the long work) is
:mod:`.endpoints`'s docstring.

Long operations are started with one request each and never polled (:mod:`.single_requests`): the
SDK's ``begin_*`` pollers would keep polling in daemon threads of the function host (and print
dots); the ``reconcile`` timer re-reads the state instead. Reads are the minimum the step needs
(docs/azureml-backend.md lists the counts a test measures).

Before anything is submitted the registry model's lifecycle (``FinetuneRetirementDate`` /
``InferenceRetirementDate``), both instance types (allow lists, retired sizes) and the datastore
(``AZURE_ML_DATASTORE`` on the prepared container) are checked, so a job Azure would refuse after
queueing is never sent. Once a job is final, ``get_job`` reads its steps from the run history:
start and end times, the failing step's error, and, when ``QUALITY_GATE`` is on, the metrics the
steps logged.

``azure.ai.ml`` is imported only inside functions and methods (``get_backend`` imports this
package only when ``ML_BACKEND=azureml``).

Modules: :mod:`.backend` (the class: clients, registry assets, checks, submission), :mod:`.jobs`
(job state, steps, metrics), :mod:`.registration` (the trained model), :mod:`.endpoints` (the
endpoint state machine), :mod:`.rollout` (a second deployment, the traffic split, per-deployment
figures), :mod:`.scoring_target` (URI and key), :mod:`.activity` (last request, for the janitor),
:mod:`.endpoint_health` (the healing loop's view), :mod:`.deployment_spec` (the deployment the app
creates), :mod:`.pipeline` (the pipeline job), :mod:`.finetune_parameters`,
:mod:`.foundation_model`, :mod:`.compute_sizes`, :mod:`.quota` (checks and planning),
:mod:`.training_curves` (MLflow metrics for the dashboard), :mod:`.single_requests` (one ARM call
each, no poller), :mod:`.errors`, :mod:`.sdk_values`, :mod:`.recent_reads`.
"""

from shared.backends.azureml.backend import AzureMLBackend

__all__ = ["AzureMLBackend"]
