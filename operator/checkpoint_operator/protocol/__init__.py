"""What the agent (the in-pod tool) and the operator share: the contract between them.

- names.py: what a valid file name of a checkpoint is;
- manifest.py: the manifest (every file's size and sha256, and the digest that names them) and
  its pure checks; stored beside the data, never in a status;
- results.py: one typed, versioned model per agent result (scan/snapshot, transfer, import,
  live-seal events), each field bounded;
- channel.py: how a result travels (one line the agent writes last on stdout; the operator reads
  a bounded tail of the pod's log and parses it with the same class).

The bottom layer: it imports nothing else of the package, and both sides import it, so the
operator's layers never import the agent (pyproject.toml's import contracts).
"""
