"""mma_agent.toolkits."""
