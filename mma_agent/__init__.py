"""mma-agent."""
