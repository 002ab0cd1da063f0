"""One module per ``m3bert`` subcommand (see :mod:`m3bert.app.cli`): argument parsing and a call
into the layer that does the work; no logic of their own beyond formatting a summary.
"""
