"""mma_agent.training."""
