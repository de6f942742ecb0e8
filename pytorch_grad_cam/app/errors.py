"""What goes wrong in the app, as messages for the page (never a stack trace)."""

from __future__ import annotations

import re

#: ``--flag VALUE: `` at the start of a command-line message (the page has no flags).
_LEADING_FLAG = re.compile(r"^--[\w-]+(?: [^\s:]+)?: ")


class AppInputError(Exception):
    """Something the user chose or uploaded cannot be used; the message says what and how
    to fix it, and the page shows it as it is."""


class Cancelled(Exception):
    """The user pressed Stop: the computation ends at the model's next forward pass."""


def page_message(error: Exception, subject: str) -> AppInputError:
    """A command-line error (``cli.CommandLineError``, which starts with its flag) as a
    message for the page, the flag replaced by ``subject``.

    Args:
        error: the error to reword.
        subject: what the message is about, e.g. ``"Model resnet18"``.
    """
    text = _LEADING_FLAG.sub("", str(error), count=1)
    return AppInputError(f"{subject}: {text}")
