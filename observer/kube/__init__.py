"""The Kubernetes API: one connection, and list+watch caches that are cheap for the server."""
