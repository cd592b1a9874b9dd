"""Sources: any table's rows embedded chunk by chunk (catalog, chunking, pipeline, search)."""
