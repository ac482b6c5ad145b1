"""The benchmarks behind ``swapd bench NAME`` (one module each; see :mod:`swapd.cmd.bench`)."""
