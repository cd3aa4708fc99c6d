"""checkpoint-operator: ML training checkpoints as immutable Kubernetes objects."""

__version__ = "0.1.0"
GROUP = "ckpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
