"""Where checkpoint bytes live: the volume store (PVCs) and the s3 store."""
