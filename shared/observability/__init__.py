"""What the app knows, gathered for people: the status report (:mod:`.status`)."""
