"""The MOSS web-search plugin, over a local corpus: ``Search("capital of France")`` (MOSS §8.2).

The lab has no web: ``Search`` ranks the passages of a small corpus the lab ships
(``corpus.json`` next to this file: short common-knowledge passages on geography, science,
history, units and arithmetic, some in Chinese) with BM25 (the ``bm25s`` package). The index
is built on first use and kept.

Text is cut into lowercase Latin/digit words (English stop words dropped, an ending ``-ing``,
``-ed`` or ``-s`` stripped) and, for Chinese, single characters and character pairs. The result is the top
:data:`TOP_K` passages with a positive score, as ``<title>: <text>`` joined by `` | `` on one
line, best first; ``No result.`` when no query term occurs in the corpus.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from alignment.tools.base import NO_RESULT, Tool

TOP_K = 3
"""How many passages a search returns at most."""
MAX_QUERY_LENGTH = 500
"""Longest query, in characters (the rest is dropped)."""
SEPARATOR = " | "
"""Between the passages of one result."""

STOP_WORDS = frozenset(
    "a an and are as at be by can did do does for from had has have how i in is it its me my "
    "of on or please s search than that the their there these this to was were what when where "
    "which who whom whose why will with you your".split()
)
_STOP_CHARS = frozenset("的是了在和也吗呢吧啊与及个这那哪里什么谁怎多少么")
_WORD = re.compile(r"[a-z0-9]+|[\u3400-\u9fff]+")


class Passage(NamedTuple):
    """One corpus entry."""

    title: str
    text: str

    def render(self) -> str:
        """The passage as a search snippet, ``<title>: <text>``, on one line."""
        return " ".join(f"{self.title}: {self.text}".split())


def _stem(word: str) -> str:
    """``word`` without an ending ``-ing``, ``-ed`` or plural ``-s`` (a crude stemmer: boiling, boils -> boil)."""
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def tokenize(text: str) -> list[str]:
    """The index terms of ``text``: English words (no stop words, crudely stemmed), Chinese characters and pairs."""
    terms: list[str] = []
    for run in _WORD.findall(text.lower()):
        if run[0] < "\u3400":  # a Latin/digit word
            if run in STOP_WORDS:
                continue
            terms.append(_stem(run))
        else:  # a run of Chinese characters
            terms.extend(ch for ch in run if ch not in _STOP_CHARS)
            terms.extend(run[i : i + 2] for i in range(len(run) - 1))
    return terms


def load_corpus(path: str | Path | None = None) -> list[Passage]:
    """The passages of a corpus file (a JSON list of ``{"title", "text"}``); the lab's own by default."""
    if path is None:
        raw = resources.files("alignment.tools").joinpath("corpus.json").read_text(encoding="utf-8")
    else:
        raw = Path(path).read_text(encoding="utf-8")
    return [Passage(str(p["title"]), str(p["text"])) for p in json.loads(raw)]


class Search(Tool):
    """``Search(query)``: the best passages of a local corpus by BM25, or ``No result.``"""

    name = "Search"

    def __init__(self, passages: Sequence[Passage] | None = None, top_k: int = TOP_K) -> None:
        """Search ``passages`` (the lab's ``corpus.json`` when ``None``), returning up to ``top_k``."""
        self._passages = list(passages) if passages is not None else None
        self.top_k = top_k
        self._retriever = None
        self._lock = threading.Lock()

    @property
    def passages(self) -> list[Passage]:
        """The corpus (loaded on first use)."""
        if self._passages is None:
            self._passages = load_corpus()
        return self._passages

    def _index(self):
        """The BM25 index of the corpus, built once."""
        with self._lock:
            if self._retriever is None:
                import bm25s

                retriever = bm25s.BM25()
                retriever.index([tokenize(f"{p.title} {p.text}") for p in self.passages], show_progress=False)
                self._retriever = retriever
            return self._retriever

    def ranked(self, query: str) -> list[tuple[Passage, float]]:
        """The best passages for ``query`` with their BM25 scores, best first; only positive scores."""
        retriever = self._index()
        terms = [t for t in tokenize(query[:MAX_QUERY_LENGTH]) if t in retriever.vocab_dict]
        if not terms:
            return []
        k = min(self.top_k, len(self.passages))
        ids, scores = retriever.retrieve([terms], k=k, show_progress=False)
        return [(self.passages[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def run(self, arg: str) -> str:
        found = self.ranked(arg)
        return SEPARATOR.join(p.render() for p, _ in found) if found else NO_RESULT
