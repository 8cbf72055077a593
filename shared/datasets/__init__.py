"""Chat data: an upload's format and streams (:mod:`.uploads`) and limits (:mod:`.upload_limits`),
the row schema (:mod:`.schema`), the preparation of a file (:mod:`.preparation`, its report
:mod:`.report`), and intake of an uploaded blob into a prepared, recorded, submitted dataset
(:mod:`.intake`)."""
