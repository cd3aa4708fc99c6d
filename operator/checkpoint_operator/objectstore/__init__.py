"""S3-compatible object storage: URIs, the client, one-line errors, the commit check (a checkpoint's
manifest object is written last), deletes, and the fast data path.

Shared by the agent (which moves the bytes) and the operator's s3 store (which only checks
commits and deletes data it owns): both may import it, and it imports only protocol/.
"""
