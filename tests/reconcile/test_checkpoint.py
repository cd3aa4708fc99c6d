"""The Checkpoint reconcile (reconcile/checkpoint.py) against the emulated API."""

import pytest

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import CHECKPOINTS, Kube
from checkpoint_operator.reconcile import checkpoint
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import InvalidObject, parse
from factories import indexes


@pytest.fixture
def ctx(api_url):
    ctx = Context(kube=Kube.from_url(api_url), config=OperatorConfig())
    ctx.indexes = indexes()
    return ctx


def test_a_checkpoint_whose_spec_no_longer_parses_is_still_released_when_deleted(ctx):
    """A spec stored before a CRD upgrade tightened a rule is served as stored, and the model
    refuses it: its deletion must not need the spec (it raised AttributeError on spec None)."""
    ctx.kube.create(CHECKPOINTS, "default", {"metadata": {"name": "old", "finalizers": [PROTECTION_FINALIZER]},
                                             "spec": {"source": {"volume": {"claimName": "c"}}}})
    ctx.kube.delete(CHECKPOINTS, "default", "old")
    body = ctx.kube.get(CHECKPOINTS, "default", "old")
    body["spec"]["source"]["volume"]["path"] = "../elsewhere"  # as an older version stored it
    with pytest.raises(InvalidObject) as invalid:
        parse(Checkpoint, body)
    ctx.kube.get = lambda resource, namespace, name: invalid.value.body  # what the reconcile reads
    assert checkpoint.reconcile(ctx, "default", "old") is None
    del ctx.kube.get
    assert ctx.kube.get(CHECKPOINTS, "default", "old") is None
    assert ctx.kube.get(CHECKPOINTS, "default", "old") is None
