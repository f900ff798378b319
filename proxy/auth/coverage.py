"""Whether a set of grant patterns covers every repository a glob can name.

A chain's ``match`` glob (``*`` and ``?`` inside one path component, ``**`` across
components, anywhere) reads every repository it matches, now and later. Whoever defines
it must be able to pull all of them, so the question is language inclusion: is every
valid repository name the glob matches also matched by one of the principal's grant
patterns (``proxy.auth.patterns`` syntax)? Both are regular, so this is decided exactly by
walking the product of their automata, and the answer when it is "no" is the shortest
repository name that proves it, which the error can name.

Only the characters the patterns mention matter: any other name character behaves like
every other, so the walk uses those characters, ``/`` and one stand-in for the rest."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .patterns import validate_pattern

__all__ = ["CoverageError", "uncovered"]

# Character classes on automaton edges: one character, any but "/", or any at all.
_SEG = "\x00seg"
_ANY = "\x00any"
# The stand-in is the first of these the patterns don't use; examples read like names.
_NAME_CHARS = "xyzabcdefghijklmnopqrstuvw0123456789._-"
# Product states explored before giving up (patterns a person writes stay far below this).
MAX_STATES = 200_000


class CoverageError(ValueError):
    """The globs are too complex to decide; refused rather than guessed."""


@dataclass
class _Nfa:
    edges: list[list[tuple[str, int]]] = field(default_factory=list)  # state -> [(class, next)]
    eps: list[list[int]] = field(default_factory=list)
    accept: set[int] = field(default_factory=set)

    def state(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for nxt in self.eps[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def step(self, states: frozenset[int], char: str) -> frozenset[int]:
        out = {nxt for s in states for cls, nxt in self.edges[s] if _admits(cls, char)}
        return self.closure(out)

    def accepts(self, states: frozenset[int]) -> bool:
        return not self.accept.isdisjoint(states)


def _admits(cls: str, char: str) -> bool:
    if cls == _ANY:
        return True
    if cls == _SEG:
        return char != "/"
    return cls == char


def _glob_nfa(glob: str, nfa: _Nfa) -> int:
    """A chain glob: ``**`` any characters, ``*`` any within a component, ``?`` one."""
    start = cur = nfa.state()
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            nfa.edges[cur].append((_ANY, cur))
            i += 2
            continue
        nxt = nfa.state()
        if glob[i] == "*":
            nfa.edges[cur].append((_SEG, cur))
            nfa.eps[cur].append(nxt)
        else:
            nfa.edges[cur].append((_SEG if glob[i] == "?" else glob[i], nxt))
        cur = nxt
        i += 1
    nfa.accept.add(cur)
    return start


def _pattern_nfa(pattern: str, nfa: _Nfa) -> int:
    """A grant pattern (``proxy.auth.patterns``): ``*`` within a segment, ``**`` whole segments."""
    validate_pattern(pattern)
    start = cur = nfa.state()
    segments = pattern.split("/")
    for n, segment in enumerate(segments):
        last = n == len(segments) - 1
        if segment == "**":
            # Middle: zero or more "segment/"; last: one or more segments.
            inside, after = nfa.state(), nfa.state()
            nfa.edges[cur].append((_SEG, inside))
            nfa.edges[inside].append((_SEG, inside))
            if last:
                nfa.edges[inside].append(("/", after))
                nfa.edges[after].append((_SEG, inside))
                nfa.accept.add(inside)
                return start
            nfa.edges[inside].append(("/", cur))
            nfa.eps[cur].append(after)
            cur = after
            continue
        for char in segment:
            if char == "*":
                nfa.edges[cur].append((_SEG, cur))
            else:
                nxt = nfa.state()
                nfa.edges[cur].append((char, nxt))
                cur = nxt
        if not last:
            nxt = nfa.state()
            nfa.edges[cur].append(("/", nxt))
            cur = nxt
    nfa.accept.add(cur)
    return start


# Valid repository names (distribution-spec): components ``[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*``
# joined by "/". States: before a component, inside one (accepting), after ".", after "_",
# after "__", after dashes; "dead" once the name can no longer be valid.
_NAME_START, _NAME_IN, _NAME_DOT, _NAME_US, _NAME_US2, _NAME_DASH, _NAME_DEAD = range(7)
_NAME_SEPARATORS = {
    ".": {_NAME_IN: _NAME_DOT},
    "_": {_NAME_IN: _NAME_US, _NAME_US: _NAME_US2},
    "-": {_NAME_IN: _NAME_DASH, _NAME_DASH: _NAME_DASH},
    "/": {_NAME_IN: _NAME_START},
}


def _name_step(state: int, char: str) -> int:
    if state == _NAME_DEAD:
        return state
    if char in _NAME_SEPARATORS:
        return _NAME_SEPARATORS[char].get(state, _NAME_DEAD)
    return _NAME_IN


def uncovered(glob: str, patterns: Sequence[str], within: str = "**") -> str | None:
    """The shortest repository name ``glob`` matches inside ``within`` (a pattern: the
    names that matter) that no pattern matches; None when the patterns cover it all.
    Raises ``CoverageError`` past ``MAX_STATES``."""
    for pattern in (*patterns, within):
        validate_pattern(pattern)
    literals = {c for text in (glob, within, *patterns) for c in text if c not in "*?/"}
    fresh = next((c for c in _NAME_CHARS if c not in literals), None)
    # Letters and digits first, so the example found is a plausible repository name.
    alphabet = ([fresh] if fresh else []) + sorted(literals, key=lambda c: (not c.isalnum(), c)) + ["/"]

    g, w, p = _Nfa(), _Nfa(), _Nfa()
    g_start = g.closure([_glob_nfa(glob, g)])
    w_start = w.closure([_pattern_nfa(within, w)])
    p_start = p.closure([_pattern_nfa(pattern, p) for pattern in patterns])

    start = (g_start, w_start, _NAME_START, p_start)
    seen = {start}
    queue: deque[tuple[tuple[frozenset[int], frozenset[int], int, frozenset[int]], str]] = deque([(start, "")])
    while queue:
        (gs, ws, name, ps), text = queue.popleft()
        if g.accepts(gs) and w.accepts(ws) and name == _NAME_IN and not p.accepts(ps):
            return text
        for char in alphabet:
            nxt_g, nxt_w = g.step(gs, char), w.step(ws, char)
            nxt_name = _name_step(name, char)
            if not nxt_g or not nxt_w or nxt_name == _NAME_DEAD:
                continue
            state = (nxt_g, nxt_w, nxt_name, p.step(ps, char))
            if state in seen:
                continue
            if len(seen) >= MAX_STATES:
                raise CoverageError(f"{glob!r} is too complex to check against the grants")
            seen.add(state)
            queue.append((state, text + char))
    return None
