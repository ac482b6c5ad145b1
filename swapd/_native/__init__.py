"""The compiled implementation of swapd's hot paths (C sources; built by setup.py).

``_core.c`` is a CPython extension module, ``swapd._native._core``.  Nothing here is imported
directly: :mod:`swapd.impl` chooses between it and the pure-Python reference
(``SWAPD_IMPL=compiled|python|auto``) and reports why the compiled one is unavailable.  When the
build failed, setup.py leaves the compiler's message in ``BUILD_ERROR.txt`` beside this file so
that the fallback warning can name it (docs/design.md, "The compiled implementation").
"""
