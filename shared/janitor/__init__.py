"""The idle janitor: the pure idle policy (:mod:`.policy`) and one run that deletes idle endpoints
(:mod:`.run`)."""
