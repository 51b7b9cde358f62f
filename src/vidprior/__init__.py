"""vidprior: Uni-C and UDPDiff as reproducible MLOps pipelines (DVC locally, Kubeflow in production)."""

__version__ = "0.1.0"
