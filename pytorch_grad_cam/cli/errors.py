"""The command line's errors: what the user asked for cannot be done.

A :class:`CommandLineError` is printed as one line, ``<prog>: error: <message>``, with
exit status 2 and nothing written. It carries the flag at fault, so that no caller has to
read the flag back from the text: the app (``pytorch_grad_cam.app``) rewords the message
for its page, and the example scripts rename a flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class CommandLineError(Exception):
    """A problem with the user's arguments: printed as one line, exit status 2.

    ``str(error)`` is the whole line after ``prog: error: ``: ``--flag VALUE: message``
    when ``flag`` is given, else ``message`` alone (which may name a flag in its own
    words, e.g. ``--use-cuda contradicts --device cpu``).

    Args:
        message: what is wrong and how to fix it.
        flag: the flag at fault, e.g. ``"--target-layer"``.
        value: that flag's value as the message shows it, e.g. ``"no/such.png"`` or
            ``"'tiger cat'"``; ``None`` shows the flag alone.
    """

    def __init__(self, message: str, flag: str | None = None, value: str | None = None) -> None:
        self.message = message
        self.flag = flag
        self.value = value
        super().__init__(self.line)

    @property
    def line(self) -> str:
        """The line the user sees: ``--flag VALUE: message``, or ``message``."""
        if self.flag is None:
            return self.message
        subject = self.flag if self.value is None else f"{self.flag} {self.value}"
        return f"{subject}: {self.message}"

    def for_flag(self, flag: str) -> CommandLineError:
        """The same error about another flag (a script that spells the flag its own way)."""
        return type(self)(self.message, flag, self.value)


class WeightsUnavailableError(CommandLineError):
    """Pretrained weights that are neither cached nor downloadable (no network)."""


@contextmanager
def blamed_on(flag: str, value: str | None = None) -> Iterator[None]:
    """Turn a ``ValueError`` of the library inside the block into a ``CommandLineError``
    about ``flag`` (``value``): the library's message, less its final full stop.

    Args:
        flag: the flag whose value the library refused, e.g. ``"--method"``.
        value: the flag's value, as the user wrote it.
    """
    try:
        yield
    except ValueError as error:
        raise CommandLineError(str(error).rstrip("."), flag, value) from error
