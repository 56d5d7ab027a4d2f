"""Real services for the test suite: Elasticsearch, kube-apiserver with etcd, Prometheus,
Alertmanager and Helm. `plugin.py` exposes them as session-scoped pytest fixtures."""
