"""Every record kind of the ledger, its states and the transitions allowed between them.

This is the one place the app's state machine is written down. Each kind has one owner: the
package that creates its records and moves them between states (everyone else only reads, or
adds fields with :meth:`shared.ledger.store.Ledger.annotate`).

Table layout (unchanged since the first release, so no data migration): PartitionKey = kind,
RowKey = id, columns ``state``, ``created_at``, ``updated_at`` and ``fields`` (JSON).

=============  =====================  ====================================================
kind           id                     owner
=============  =====================  ====================================================
``dataset``    dataset id             :mod:`shared.datasets.intake` (received -> accepted |
                                      rejected | eval (a golden file, never trained on);
                                      upload mode: -> submitted);
                                      :mod:`shared.training.submission` (corpus mode:
                                      accepted -> submitted when its first corpus is submitted;
                                      accepted | submitted -> retired, ``datasets retire``)
``collection`` collection name        :mod:`shared.training.submission` (corpus mode: what
                                      waits for a job, when it is due, the submission claim)
``job``        backend job name       :mod:`shared.datasets.intake` (upload mode) or
                                      :mod:`shared.training.submission` (corpus mode) creates
                                      it (submitted); :mod:`shared.deployment.job_outcome` ends it
``model``      ``name:version``       :mod:`shared.deployment.job_outcome` (registration);
                                      :mod:`shared.endpoints.lifecycle` (deploying/deployed)
``endpoint``   endpoint name          :mod:`shared.endpoints.lifecycle`; :mod:`shared.endpoints.healing`
                                      (unhealthy -> failed, heal attempts; redeploys via lifecycle)
``active``     fine-tuned model name  :mod:`shared.endpoints.lifecycle` (which endpoint serves)
``janitor``    ``last``               :mod:`shared.janitor.run`
``rollout``    ``name:version``       :mod:`shared.rollout` (a candidate deployment beside the
                                      serving one: judged, canaried, promoted or rolled back)
``evaluation`` ``name:version``       :mod:`shared.evaluation.judge` (evaluating -> promoted |
                                      rejected; operators: ``cli promote`` / ``cli reject``)
=============  =====================  ====================================================

Transitions are ETag-conditional (:meth:`Ledger.transition`): of concurrent or repeated
deliveries exactly one wins a transition and acts.
"""

from __future__ import annotations

from shared.backends import base as B

# ---- record kinds (PartitionKey values; never rename the strings)
DATASET = "dataset"
COLLECTION = "collection"  # id: collection name (the first folder of an upload's blob name)
JOB = "job"
MODEL = "model"
ENDPOINT = "endpoint"
ROUTE = "active"  # id: fine-tuned model name -> the endpoint that serves it (its "route")
JANITOR = "janitor"  # id "last": what the idle janitor did last
ROLLOUT = "rollout"  # id: ``name:version`` of a candidate deployed beside the serving version
EVALUATION = "evaluation"  # id ``name:version``: a candidate judged against the champion (shared.evaluation.judge)

# ---- dataset states
DATASET_RECEIVED = "received"  # blob being prepared (a crash here is retried by the next delivery)
DATASET_ACCEPTED = "accepted"  # prepared and good enough to train on; not submitted yet
DATASET_REJECTED = "rejected"  # final: the report says why
DATASET_SUBMITTED = "submitted"  # its (first) job is named in ``job_name``; corpus mode: in every later corpus too
DATASET_RETIRED = "retired"  # final: left out of every later corpus (raw upload and report stay)
DATASET_EVAL = "eval"  # a golden file (``<collection>/eval/``): in the collection's eval set, never trained on

# ---- collection states (corpus mode). "pending" is a summary kept for status and as the
# holder of the submission claim; what waits is always derived from the collection's
# datasets in "accepted", so a crash between the two writes loses nothing.
COLLECTION_IDLE = "idle"  # every accepted dataset is in a submitted corpus
COLLECTION_PENDING = "pending"  # accepted data waits for a job (``due_at``, ``held_reason``)

# ---- job states (the final ones are the backends' normalised words, shared.backends.base)
JOB_SUBMITTED = "submitted"  # submitted; running or queued as far as the ledger knows
JOB_COMPLETED = B.COMPLETED  # registration fields are added to it (model_version, ...)
JOB_FAILED = B.FAILED  # final
JOB_CANCELED = B.CANCELED  # final

# ---- model states
MODEL_REGISTERED = "registered"
MODEL_DEPLOYING = "deploying"
MODEL_DEPLOYED = "deployed"
MODEL_REJECTED = "rejected"  # a candidate judged worse, failed or rolled back (``rejected_reason``); stays registered

# ---- endpoint states (with its single deployment): the backends' normalised words
ENDPOINT_PROVISIONING = B.EP_PROVISIONING
ENDPOINT_SUCCEEDED = B.EP_SUCCEEDED
ENDPOINT_FAILED = B.EP_FAILED
ENDPOINT_DELETING = B.EP_DELETING
ENDPOINT_DELETED = B.EP_DELETED

# ---- evaluation states (a candidate's decision; the rollout acts on promoted / rejected)
EVAL_EVALUATING = "evaluating"  # answers being collected (claim + lease; resumable from the stored answers)
EVAL_PROMOTED = "promoted"  # the rule (or an operator) let it take traffic
EVAL_REJECTED = "rejected"  # the rule (or an operator) keeps it from traffic; the reason says why

# ---- route state (the "active" kind has one state: it names the serving endpoint)
ROUTE_SET = "active"

# ---- rollout states (a candidate version deployed beside the champion in the champion's endpoint)
ROLLOUT_DEPLOYING = "deploying"  # its deployment is starting at 0% traffic
ROLLOUT_EVALUATING = "evaluating"  # ready: judged against the champion (shared.evaluation)
ROLLOUT_CANARY = "canary"  # promoted by the judge: takes CANARY_PERCENT of live traffic
ROLLOUT_PROMOTED = "promoted"  # final: 100% of traffic, the old deployment deleted
ROLLOUT_REJECTED = "rejected"  # judged worse: deployment deleted, never took traffic (an operator may force it on)
ROLLOUT_ROLLED_BACK = "rolled_back"  # final: regressed in its canary, traffic back to the champion
ROLLOUT_FAILED = "failed"  # final: its deployment failed to start
ROLLOUT_SUPERSEDED = "superseded"  # final: the champion changed under it (rollback, newer version, endpoint gone)
ROLLOUT_LIVE = frozenset({ROLLOUT_DEPLOYING, ROLLOUT_EVALUATING, ROLLOUT_CANARY})

# ---- delete reasons recorded on an endpoint going to "deleting"
DELETE_REASON_REPLACED = "replaced"  # a newer version became active (DELETE_REPLACED_ENDPOINTS)

TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    DATASET: {
        "": frozenset({DATASET_RECEIVED}),
        DATASET_RECEIVED: frozenset({DATASET_ACCEPTED, DATASET_REJECTED, DATASET_EVAL}),
        DATASET_ACCEPTED: frozenset({DATASET_SUBMITTED, DATASET_RETIRED}),
        DATASET_REJECTED: frozenset(),
        DATASET_SUBMITTED: frozenset({DATASET_RETIRED}),  # retire: out of the next corpus
        DATASET_RETIRED: frozenset(),
        DATASET_EVAL: frozenset({DATASET_RETIRED}),  # retire: out of the eval set
    },
    COLLECTION: {
        "": frozenset({COLLECTION_IDLE, COLLECTION_PENDING}),
        COLLECTION_IDLE: frozenset({COLLECTION_PENDING}),
        COLLECTION_PENDING: frozenset({COLLECTION_IDLE}),
    },
    JOB: {
        "": frozenset({JOB_SUBMITTED}),
        JOB_SUBMITTED: frozenset({JOB_COMPLETED, JOB_FAILED, JOB_CANCELED}),
        JOB_COMPLETED: frozenset(),
        JOB_FAILED: frozenset(),
        JOB_CANCELED: frozenset(),
    },
    MODEL: {
        "": frozenset({MODEL_REGISTERED}),
        MODEL_REGISTERED: frozenset({MODEL_DEPLOYING}),
        MODEL_DEPLOYING: frozenset({MODEL_DEPLOYED, MODEL_REGISTERED, MODEL_REJECTED}),  # back: a transient deploy failure
        MODEL_DEPLOYED: frozenset(),
        MODEL_REJECTED: frozenset({MODEL_DEPLOYING}),  # an operator forces it on
    },
    ENDPOINT: {
        "": frozenset({ENDPOINT_PROVISIONING}),
        ENDPOINT_PROVISIONING: frozenset({ENDPOINT_SUCCEEDED, ENDPOINT_FAILED}),
        # -> failed: the health loop found it not serving (shared.endpoints.healing), and heals it
        ENDPOINT_SUCCEEDED: frozenset({ENDPOINT_DELETING, ENDPOINT_FAILED}),
        ENDPOINT_FAILED: frozenset({ENDPOINT_PROVISIONING, ENDPOINT_DELETING}),
        # back to succeeded: the janitor's delete call failed, the endpoint still serves
        ENDPOINT_DELETING: frozenset({ENDPOINT_DELETED, ENDPOINT_SUCCEEDED}),
        ENDPOINT_DELETED: frozenset({ENDPOINT_PROVISIONING}),  # revived (scale from zero)
    },
    ROUTE: {"": frozenset({ROUTE_SET}), ROUTE_SET: frozenset({ROUTE_SET})},
    ROLLOUT: {
        "": frozenset({ROLLOUT_DEPLOYING}),
        # -> promoted: an operator's rollback to this version (mode "rollback": no judge, no canary)
        ROLLOUT_DEPLOYING: frozenset({ROLLOUT_EVALUATING, ROLLOUT_FAILED, ROLLOUT_SUPERSEDED, ROLLOUT_PROMOTED}),
        ROLLOUT_EVALUATING: frozenset({ROLLOUT_CANARY, ROLLOUT_REJECTED, ROLLOUT_FAILED, ROLLOUT_SUPERSEDED}),
        ROLLOUT_CANARY: frozenset({ROLLOUT_PROMOTED, ROLLOUT_ROLLED_BACK, ROLLOUT_SUPERSEDED}),
        ROLLOUT_REJECTED: frozenset({ROLLOUT_DEPLOYING}),  # an operator's forced promotion redeploys it
        ROLLOUT_PROMOTED: frozenset(),
        ROLLOUT_ROLLED_BACK: frozenset(),
        ROLLOUT_FAILED: frozenset(),
        ROLLOUT_SUPERSEDED: frozenset(),
    },
    EVALUATION: {
        "": frozenset({EVAL_EVALUATING, EVAL_PROMOTED, EVAL_REJECTED}),  # promoted/rejected: an operator, never evaluated
        EVAL_EVALUATING: frozenset({EVAL_EVALUATING, EVAL_PROMOTED, EVAL_REJECTED}),
        EVAL_PROMOTED: frozenset({EVAL_REJECTED}),  # cli reject
        EVAL_REJECTED: frozenset({EVAL_PROMOTED}),  # cli promote (re-judged, or --force)
    },
}


def allowed(kind: str, from_state: str, to_state: str) -> bool:
    """Whether the state machine allows ``from_state`` -> ``to_state`` for ``kind`` ("" = new record).

    Kinds without a state machine (``janitor``) allow anything.
    """
    machine = TRANSITIONS.get(kind)
    if machine is None:
        return True
    return to_state in machine.get(from_state, frozenset())
