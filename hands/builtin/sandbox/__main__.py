"""python -m hands.builtin.sandbox: serve the sandbox hands."""

from hands.builtin.sandbox.service import main

raise SystemExit(main())
