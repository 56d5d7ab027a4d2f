"""Elasticsearch: the connection both deployables use, and the agent's log sink."""

from observer.sinks.elasticsearch.connection import connect
from observer.sinks.elasticsearch.sink import ElasticsearchSink

__all__ = ["ElasticsearchSink", "connect"]
