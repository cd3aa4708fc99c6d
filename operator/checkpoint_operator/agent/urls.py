"""Moved to checkpoint_operator.protocol.urls (shared with the operator's objectstore/, which must not import the agent).

This name stays an alias of that module (the same module object, so monkeypatching either
works) for code written against the old place; new code imports checkpoint_operator.protocol.urls.
"""

import sys

from checkpoint_operator.protocol import urls as _moved
from checkpoint_operator.protocol.urls import *  # noqa: F401,F403 (what type checkers see)

sys.modules[__name__] = _moved
