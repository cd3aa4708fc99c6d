"""The data plane: commands that run inside short-lived pods (and by hand). No kopf, no API calls."""
