"""The trace collector: whole traces, the service graph, RED metrics, storage and queries."""
