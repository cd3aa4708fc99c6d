"""The s3 store as the operator process sees it: only deletion of the data it owns.
Bytes move in agent pods (agent/), never in the operator."""

from __future__ import annotations

from checkpoint_operator.config import OperatorConfig


def delete_checkpoint_data(config: OperatorConfig, uri: str) -> int:
    """Delete everything under `uri` (idempotent: deleting gone data succeeds). Credentials come
    from the operator's environment (the chart passes the store's Secret)."""
    from checkpoint_operator.agent.s3 import delete_prefix
    return delete_prefix(uri, endpoint_url=config.s3_endpoint)
