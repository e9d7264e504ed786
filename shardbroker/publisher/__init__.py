"""Publisher side: the Publisher library, pre-built batches, the load generator."""
