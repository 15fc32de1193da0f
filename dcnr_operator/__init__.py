"""dcnr-operator: Network and Job custom resources (dcnr.io/v1) reconciled through kopf.

A client of the dcnr.v1 protocol like dcnctl: it imports `api` and nothing else of ours
(an import-linter contract), and talks to the orchestrator over gRPC only. The Kubernetes
objects are the desired state; the orchestrator holds the running state; a periodic re-sync
compares the two and repairs drift either way (docs/operator.md).
"""
