"""Datasets: each module reads one corpus's layout into recordings, labels and splits."""
