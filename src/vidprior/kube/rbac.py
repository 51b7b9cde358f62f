"""The permissions a launching step's service account needs, as a namespaced Role and RoleBinding.

In a Kubeflow profile namespace the pipeline runner (`default-editor`) usually has them already through
the aggregated `kubeflow-edit` role; elsewhere apply these (`kubectl apply -f`) for the account the
pipeline's pods run as.
"""

from __future__ import annotations

from typing import Any

from vidprior.kube.training_job import PART_OF, PYTORCHJOB, TRAINJOB

RULES = [
    # Create the job, follow its status, delete it when it runs past its timeout.
    {"apiGroups": [PYTORCHJOB[0]], "resources": [PYTORCHJOB[2]], "verbs": ["create", "get", "delete"]},
    {"apiGroups": [TRAINJOB[0]], "resources": [TRAINJOB[2]], "verbs": ["create", "get", "delete"]},
    # Find the master pod and stream its log.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def launcher_rbac(
    namespace: str, service_account: str, name: str = "vidprior-training-launcher"
) -> list[dict[str, Any]]:
    metadata = {"name": name, "namespace": namespace, "labels": dict(PART_OF)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata,
        "rules": RULES,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": dict(metadata),
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
    }
    return [role, binding]
