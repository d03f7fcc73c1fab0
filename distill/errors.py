"""The error rule every command follows, in one place.

* :class:`InputError` (and its subclasses): an input the user must fix (a command-line argument, a
  config key, a data folder, a pairs file, a weights file). The CLI prints the message (one paragraph
  naming the file or key and a remedy that exists) and exits with code **2**.
* Anything else is a runtime failure (exit code **1**); ``--debug`` shows the traceback.

Library modules raise the most specific subclass (``ConfigError``, ``DatasetError``,
``PairsFormatError``, ...); each also derives from the builtin it replaces (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` in user code keeps working.

Example::

    from distill.errors import InputError

    class PairsFormatError(InputError, ValueError):
        '''A pairs file does not follow the LFW format; the message names file:line.'''
"""
from __future__ import annotations

#: exit code for an input the user must fix
EXIT_INPUT = 2
#: exit code for a runtime failure
EXIT_RUNTIME = 1


class InputError(Exception):
    """An input the user must fix; the message names it and says what to do (CLI exit code 2)."""


class UsageError(InputError):
    """Bad command-line arguments (CLI exit code 2)."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named (in a config or on the command line) does not exist (CLI exit code 2)."""
