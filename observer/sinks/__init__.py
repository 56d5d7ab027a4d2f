"""Where records are written. Each sink takes batches and says which it has settled."""
