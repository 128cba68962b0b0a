"""Benchmarks of brainhands against peers and ideals; `python -m bench` writes bench/results/REPORT.md."""
