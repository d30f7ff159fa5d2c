"""`python -m mma_agent.cli`."""

from mma_agent.cli import main

raise SystemExit(main())
