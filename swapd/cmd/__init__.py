"""The ``swapd`` subcommands, one module each.

A module ``swapd/cmd/NAME.py`` is the command ``swapd NAME`` (underscores become
dashes).  It defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; its docstring is the command's ``--help`` description.
Modules whose name starts with ``_`` are helpers, not commands.  A new command
is a new file: nothing else is edited (``swapd/cli.py`` discovers them).
"""
