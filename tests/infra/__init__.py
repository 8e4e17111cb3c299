"""Checks of the deployment files (Containerfile, infra/compose.yaml, infra/k8s) that need no
registry, cluster or GPU: parsed, validated against schemas, and cross-checked with the code."""

#: Seconds a worker needs after its drain (ONNX_WEB_SHUTDOWN_GRACE_S) to hand its job back and write
#: a last upload before it is killed; its grace period in compose and Kubernetes covers both.
DRAIN_MARGIN_S = 20
