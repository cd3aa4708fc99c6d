"""Moved to checkpoint_operator.objectstore.s3http (shared with the operator's s3 store, which must not import the agent).

This name stays an alias of that module (the same module object, so monkeypatching either
works) for code written against the old place; new code imports checkpoint_operator.objectstore.s3http.
"""

import sys

from checkpoint_operator.objectstore import s3http as _moved
from checkpoint_operator.objectstore.s3http import *  # noqa: F401,F403 (what type checkers see)

sys.modules[__name__] = _moved
