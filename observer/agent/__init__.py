"""The per-node agent (a DaemonSet): container logs, kubelet events and spans of its node."""
