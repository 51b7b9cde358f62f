"""Training with DeepSpeed, shared by the training stages (`unic.train`, later UDPDiff).

`vidprior.training.engine` holds the DeepSpeed config, process-group, engine and checkpoint helpers;
DeepSpeed itself is imported only when an engine is built.
"""
