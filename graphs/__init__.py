"""mma_agent.graphs."""
