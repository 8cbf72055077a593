"""Online endpoints: the only owner of endpoint and route records. :mod:`.lifecycle` (deploy,
settle, activate, promote, retire), :mod:`.deletion` (claim, delete, record deleted),
:mod:`.rollback`, :mod:`.healing` (redeploy what stopped serving), :mod:`.followup` (checks within
seconds), :mod:`.capacity`; which endpoint serves a model (:mod:`.serving`), naming and version
ordering."""
