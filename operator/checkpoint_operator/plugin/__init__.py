"""`kubectl ckpt`: list, trace, verify, pull and push Checkpoints from a user's machine.

commands.py holds the commands, client.py the cluster connection (kubeconfig, exec), views.py
what they print; cli.py parses the command line of both `kubectl ckpt` (the console script
`kubectl-ckpt`) and `checkpoint-operator ckpt`.
"""
