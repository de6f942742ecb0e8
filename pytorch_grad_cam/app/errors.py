"""What goes wrong in the app, as messages for the page (never a stack trace)."""

from __future__ import annotations

import re

from pytorch_grad_cam.cli.errors import CommandLineError

#: ``--flag VALUE: `` at the start of a command-line message (the page has no flags).
_LEADING_FLAG = re.compile(r"^--[\w-]+(?: [^\s:]+)?: ")


class AppInputError(Exception):
    """Something the user chose or uploaded cannot be used; the message says what and how
    to fix it, and the page shows it as it is."""


class Cancelled(Exception):
    """The user pressed Stop: the computation ends at the model's next forward pass."""


def page_message(error: Exception, subject: str) -> AppInputError:
    """A command-line error as a message for the page, its flag replaced by ``subject``.

    A ``CommandLineError`` about a flag gives its message; another error (or one whose
    text names its flag itself) loses a leading ``--flag VALUE: `` if it has one.

    Args:
        error: the error to reword.
        subject: what the message is about, e.g. ``"Model resnet18"``.
    """
    if isinstance(error, CommandLineError) and error.flag is not None:
        text = error.message
    else:
        text = _LEADING_FLAG.sub("", str(error), count=1)
    return AppInputError(f"{subject}: {text}")
