"""Moved to checkpoint_operator.protocol.errors (shared with the operator, which must not import the agent).

This name stays an alias of that module (the same module object, so monkeypatching either
works) for code written against the old place; new code imports checkpoint_operator.protocol.errors.
"""

import sys

from checkpoint_operator.protocol import errors as _moved
from checkpoint_operator.protocol.errors import *  # noqa: F401,F403 (what type checkers see)

sys.modules[__name__] = _moved
