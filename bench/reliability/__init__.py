"""The reliability and security suite's runner: run tests/reliability and write bench/results/RELIABILITY.md."""
