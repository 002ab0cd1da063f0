"""Loaders for real MIR datasets; importing this package registers their tasks."""
