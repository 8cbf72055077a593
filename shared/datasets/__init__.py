"""Chat data: validation and preparation of a file (:mod:`.chat_data`) and intake of an uploaded
blob into a prepared, recorded, submitted dataset (:mod:`.intake`)."""
