"""Read the shape of a pickle without unpickling it: dicts, lists, tuples and plain values.

A checkpoint's pickles (torch.save's `data.pkl`, torch DCP's `.metadata`, Lightning's `.ckpt`)
say which keys were saved (`optimizer`, `param_groups`, `global_step`...). Unpickling them would
run whatever code they name, so this walks the opcodes (`pickletools.genops`, which only
decodes) on a small stack machine that builds containers and plain values and stands an
`Opaque` in for anything else: a class, a call, a tensor. No import, no call, ever.
"""

from __future__ import annotations

import io
import pickletools
from typing import Any, Iterator, Optional

from checkpoint_operator.agent.work_limit import WorkBudget


class NotAPickle(ValueError):
    pass


class TooBig(NotAPickle):
    """Beyond a cap (opcodes, objects): not read, which says nothing of whether it is whole."""


class Opaque:
    """Something the pickle would build by calling code: `what` names it (`module.name`),
    `state` is what BUILD would have set on it (dataclasses: their fields), `args` the call's
    arguments. Hashable by identity, as the real objects would be as dict keys."""

    __slots__ = ("what", "args", "state")

    def __init__(self, what: str, args: Any = None) -> None:
        self.what, self.args, self.state = what, args, None

    def __repr__(self) -> str:
        return f"Opaque({self.what})"


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


_MARK = object()
# A dict key is kept only when hashing it is cheap and cannot recurse: a plain value, an Opaque,
# or a tuple of those at most this deep (a pickle can nest tuples millions deep).
MAX_KEY_DEPTH = 4
MAX_KEY_ITEMS = 64  # torch DCP's MetadataIndex keys are (fqn, offsets, index): a handful of items
# `walk` descends at most this deep: a key path is copied per node, so depth costs quadratically.
MAX_WALK_DEPTH = 64
# Each opcode builds at most one object: this bounds memory (a few hundred MB at worst) whatever
# the pickle. torch DCP metadata of a large sharded model is a few million opcodes.
MAX_OPCODES = 3_000_000
# Objects one pickle may build (containers, stand-ins, values): 50-100 bytes each, so this bounds
# a parse's memory (an opcode of one byte, `}`, builds a 64-byte dict). torch DCP metadata builds
# about 50 per tensor entry.
MAX_OBJECTS = 1_500_000
# Opcodes that build no new object (memo traffic, marks, framing, filling containers).
_NO_OBJECT = frozenset({"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "BINGET", "LONG_BINGET", "GET", "MARK", "PROTO",
                        "FRAME", "POP", "POP_MARK", "DUP", "BUILD", "STOP", "NONE", "NEWTRUE", "NEWFALSE",
                        "EMPTY_TUPLE", "READONLY_BUFFER", "ADDITEMS"})
# Builders whose result is a plain dict when called without arguments.
_DICT_TYPES = {"collections.OrderedDict", "builtins.dict", "__builtin__.dict", "collections.defaultdict"}
_VALUES = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_PUSH_ARG = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
             "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
             "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}


def _called(func: Any, args: Any) -> Any:
    if isinstance(func, _Global):
        if func.qualified in _DICT_TYPES:
            return {}
        return Opaque(func.qualified, args)
    return Opaque("call", args)


def _plain_key(key: Any) -> bool:
    """A key that is cheap to hash: a plain value or stand-in, or a tuple of them at most
    MAX_KEY_DEPTH deep and MAX_KEY_ITEMS items in all (a pickle can use one tuple of a million
    items as the key of a million entries: checking and hashing it each time was quadratic)."""
    stack, items = [(key, 0)], 0
    while stack:
        k, depth = stack.pop()
        if isinstance(k, (str, bytes, int, float, bool, Opaque, _Global)) or k is None:
            continue
        if not isinstance(k, tuple) or depth >= MAX_KEY_DEPTH:
            return False
        items += len(k)
        if items > MAX_KEY_ITEMS:
            return False
        stack.extend((member, depth + 1) for member in k)
    return True


class _Machine:
    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.memo: dict[Any, Any] = {}
        self.persistent: list[Any] = []  # every persistent id, in order (torch's storages)

    def pop_mark(self) -> list[Any]:
        items: list[Any] = []
        while True:
            if not self.stack:
                raise NotAPickle("MARK missing")
            item = self.stack.pop()
            if item is _MARK:
                return items[::-1]
            items.append(item)

    def set_items(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, dict):
            for k, v in zip(items[::2], items[1::2]):
                # An unhashable or deeply nested key: keep the value under an opaque one.
                target[k if _plain_key(k) else Opaque("key")] = v

    def step(self, name: str, arg: Any) -> None:
        s = self.stack
        # The commonest opcodes first: memo traffic is about half of a checkpoint pickle.
        if name == "MEMOIZE":
            self.memo[len(self.memo)] = s[-1]
        elif name in _PUSH_ARG:
            s.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg not in self.memo:
                raise NotAPickle(f"memo {arg} missing")
            s.append(self.memo[arg])
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            self.memo[arg] = s[-1]
        elif name in _VALUES:
            s.append(_VALUES[name])
        elif name == "MARK":
            s.append(_MARK)
        elif name == "EMPTY_DICT":
            s.append({})
        elif name == "EMPTY_LIST":
            s.append([])
        elif name == "EMPTY_TUPLE":
            s.append(())
        elif name in ("EMPTY_SET", "FROZENSET"):
            s.append(Opaque("set", self.pop_mark() if name == "FROZENSET" else None))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(s) < n:
                raise NotAPickle("stack underflow")
            members = tuple(s[-n:])
            del s[-n:]
            s.append(members)
        elif name == "TUPLE":
            s.append(tuple(self.pop_mark()))
        elif name == "LIST":
            s.append(self.pop_mark())
        elif name == "DICT":
            d: dict = {}
            self.set_items(d, self.pop_mark())
            s.append(d)
        elif name == "APPEND":
            value = s.pop()
            if isinstance(s[-1], list):
                s[-1].append(value)
        elif name == "APPENDS":
            items = self.pop_mark()
            if isinstance(s[-1], list):
                s[-1].extend(items)
        elif name == "SETITEM":
            value, key = s.pop(), s.pop()
            self.set_items(s[-1], [key, value])
        elif name == "SETITEMS":
            items = self.pop_mark()
            self.set_items(s[-1], items)
        elif name == "ADDITEMS":
            self.pop_mark()
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            g = _Global(module, attr)
            s.append(g if name == "GLOBAL" else _called(g, tuple(self.pop_mark())))
        elif name == "STACK_GLOBAL":
            attr, module = s.pop(), s.pop()
            s.append(_Global(module if isinstance(module, str) else "?", attr if isinstance(attr, str) else "?"))
        elif name == "REDUCE":
            args, func = s.pop(), s.pop()
            s.append(_called(func, args))
        elif name == "NEWOBJ":
            args, cls = s.pop(), s.pop()
            s.append(_called(cls, args))
        elif name == "NEWOBJ_EX":
            _, args, cls = s.pop(), s.pop(), s.pop()
            s.append(_called(cls, args))
        elif name == "OBJ":
            items = self.pop_mark()
            s.append(_called(items[0], tuple(items[1:])) if items else Opaque("obj"))
        elif name == "BUILD":
            state = s.pop()
            if isinstance(s[-1], Opaque):
                s[-1].state = state
        elif name in ("PERSID", "BINPERSID"):
            pid = arg if name == "PERSID" else s.pop()
            self.persistent.append(pid)
            s.append(Opaque("persistent", pid))
        elif name == "POP":
            s.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            s.append(s[-1])
        elif name in ("EXT1", "EXT2", "EXT4", "NEXT_BUFFER"):
            s.append(Opaque("extension"))
        elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
            pass
        else:
            raise NotAPickle(f"opcode {name} is not read")


def loads(data: bytes) -> Any:
    """The first pickle in `data`, as plain containers and values with `Opaque` stand-ins.
    Raises NotAPickle for anything that is not a whole, well-formed pickle."""
    return load_prefix(data)[0]


def load_prefix(data: bytes, start: int = 0, persistent: Optional[list] = None,
                budget: Optional[WorkBudget] = None, *, kept: bool = False) -> tuple[Any, int]:
    """The pickle that begins at `start` in `data` and where it ends (the offset after its STOP),
    for files that are several pickles in a row (torch.save's legacy format). `persistent`, when
    given, receives every persistent id the pickle refers to. `budget`: charged one step per
    opcode (work_limit.OverBudget when it runs out); with `kept` (the caller keeps the result),
    the objects it builds are held against the budget's memory bound too. At most MAX_OPCODES
    opcodes and MAX_OBJECTS objects per pickle (NotAPickle beyond)."""
    machine = _Machine()
    stream = io.BytesIO(data)
    stream.seek(start)
    objects = 0
    no_object = _NO_OBJECT
    try:
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(stream)):
            name = opcode.name
            if name not in no_object:
                objects += 1
            if count % 1024 == 1023:
                if count >= MAX_OPCODES:
                    raise TooBig(f"more than {MAX_OPCODES} opcodes: not read")
                if objects > MAX_OBJECTS:
                    raise TooBig(f"builds more than {MAX_OBJECTS} objects: not read")
                if budget is not None:
                    budget.spend(1024)
                    if kept:
                        budget.check_hold(objects)
            if name == "STOP":
                if len(machine.stack) != 1:
                    raise NotAPickle("stack is not one value at STOP")
                if objects > MAX_OBJECTS:
                    raise TooBig(f"builds more than {MAX_OBJECTS} objects: not read")
                if budget is not None and kept:
                    budget.hold(objects)
                if persistent is not None:
                    persistent.extend(machine.persistent)
                return machine.stack[0], (pos or 0) + 1
            machine.step(name, arg)
    except NotAPickle:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        # truncated or malformed opcodes (a LONG of more digits than int() takes is a ValueError)
        raise NotAPickle(f"not a readable pickle: {_short(e)}") from None
    raise NotAPickle("no STOP: cut short")


def _short(error: Exception) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= 120 else text[:120] + "..."


def global_name(obj: Any) -> Optional[str]:
    """`module.name` of a class or function a pickle names without calling it (GLOBAL), else None."""
    return obj.qualified if isinstance(obj, _Global) else None


def walk(obj: Any, limit: int = 1_000_000) -> Iterator[tuple[tuple, Any]]:
    """(key path, value) of every node below `obj`, through dicts, lists, tuples and the state
    of Opaque objects, each shared object once (pickles may share and cycle), at most `limit`
    nodes and MAX_WALK_DEPTH levels deep."""
    seen: set[int] = set()
    stack: list[tuple[tuple, Any]] = [((), obj)]
    count = 0
    while stack and count < limit:
        path, node = stack.pop()
        count += 1
        yield path, node
        if len(path) >= MAX_WALK_DEPTH:
            continue
        if isinstance(node, (dict, list, tuple, Opaque)):
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            stack.extend((path + (k,), v) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((path + (i,), v) for i, v in enumerate(node))
        elif isinstance(node, Opaque) and node.state is not None:
            stack.append((path, node.state))


def field(obj: Any, name: str) -> Optional[Any]:
    """`obj.name` of an Opaque object built from a state dict (dataclasses, plain classes)."""
    state = obj.state if isinstance(obj, Opaque) else None
    if isinstance(state, tuple) and state and isinstance(state[0], dict):  # (dict, slots) states
        state = state[0]
    return state.get(name) if isinstance(state, dict) else None
