"""Background work of the tracking layer: none so far. Ingestion is synchronous on purpose (the
product gets a definite accepted/duplicate/rejected answer per event), and the BRIN indexes
summarise new ranges themselves (`autosummarize`)."""
