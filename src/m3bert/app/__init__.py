"""The top layer: the ``m3bert`` command line (``cli``), one module per verb (``commands``), and
the end-to-end demo (``demo``). Everything below is importable without it.
"""
