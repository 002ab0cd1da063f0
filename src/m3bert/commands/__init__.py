"""One module per ``m3bert`` subcommand (see ``m3bert.cli``)."""
