"""checkpoint-operator: ML training checkpoints as immutable Kubernetes objects."""

__version__ = "0.1.0"
GROUP = "ckpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# Every Checkpoint carries it: deletion waits until no live TrainingJob uses the checkpoint.
PROTECTION_FINALIZER = "ckpt.dev/in-use-protection"
