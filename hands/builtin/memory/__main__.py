"""python -m hands.builtin.memory: serve the memory hands."""

from hands.builtin.memory.service import main

raise SystemExit(main())
