"""Evaluation: task registry (MARBLE taxonomy), dataset loaders, probes, metrics, baselines, report."""
