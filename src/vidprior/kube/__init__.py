"""Kubernetes manifests vidprior generates, validated against the SDKs' models, and the launcher that
runs a training stage as a Kubeflow training job from a pipeline step.

- `validate`: `validate_manifest(manifest)`, strict (unknown fields, types, required fields) against the
  kubernetes client's models (built-in kinds), kubeflow-training's (PyTorchJob) or
  kubeflow-trainer-api's (TrainJob); errors name the dotted field path.
- `training_job`: the PyTorchJob / TrainJob of `unic.train` or `udpdiff.train` on N nodes x M GPUs.
- `launch`: stage inputs on the shared PVC, create the job, stream its master log, wait, copy outputs.
- `rbac`: the Role and RoleBinding a launching step's service account needs.
"""
