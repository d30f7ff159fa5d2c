"""mma_agent.evals."""
