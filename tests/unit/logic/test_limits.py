"""The import size limit (logic/limits.py): each carrier may only lower the operator's."""

import pytest

from checkpoint_operator.logic.limits import InvalidLimit, import_limit

GI = 1024 ** 3


def namespace(limit=None):
    meta = {"name": "team-a"}
    if limit is not None:
        meta["annotations"] = {"ckpt.dev/max-checkpoint-size": limit}
    return {"metadata": meta}


def test_the_namespace_and_the_checkpoint_may_lower_the_operator_limit_never_raise_it():
    assert import_limit(500 * GI, namespace(), None) == 500 * GI
    assert import_limit(500 * GI, None, None) == 500 * GI
    assert import_limit(500 * GI, namespace("50Gi"), None) == 50 * GI
    assert import_limit(500 * GI, namespace("1Ti"), None) == 500 * GI
    assert import_limit(500 * GI, namespace("50Gi"), "10Gi") == 10 * GI
    assert import_limit(500 * GI, namespace("5Gi"), "10Gi") == 5 * GI


def test_a_malformed_annotation_is_named():
    with pytest.raises(InvalidLimit, match=r"Namespace team-a: annotation ckpt.dev/max-checkpoint-size='big'"):
        import_limit(500 * GI, namespace("big"), None)
