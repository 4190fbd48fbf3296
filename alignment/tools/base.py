"""The interface every MOSS plugin tool implements (MOSS §8.2).

A tool is a callable with a ``name``, the call name the model writes in its Commands
(``Calculate``, ``Solve``, ``Search``). It takes the call's one string argument and returns
the result string the program writes into the Results field. A tool never raises: when it
finds no answer, refuses the input, or fails, it returns :data:`NO_RESULT`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

NO_RESULT = "No result."
"""What a tool returns when it has no answer (MOSS §8.2), including on errors and refusals."""


class ToolError(Exception):
    """A tool refuses or fails on an input; the tool turns it into :data:`NO_RESULT`."""


class Tool(ABC):
    """A plugin: ``tool(arg)`` is the result string for the call ``<name>("<arg>")``."""

    name: ClassVar[str]
    """The call name the model writes, e.g. ``Calculate``."""

    @abstractmethod
    def run(self, arg: str) -> str:
        """The answer for ``arg``; raise :class:`ToolError` (or any exception) when there is none."""

    def __call__(self, arg: str) -> str:
        """The result string for ``arg``: :meth:`run`'s answer, or :data:`NO_RESULT` on any error."""
        try:
            result = self.run(arg)
        except Exception:  # a tool's failure is a result, never the caller's exception
            return NO_RESULT
        return result if result else NO_RESULT
