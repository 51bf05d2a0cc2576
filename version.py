"""The version of swarmlm and the agent string peers see (identify, the swarm state)."""

__version__ = "0.1.0"
AGENT_VERSION = f"swarmlm/{__version__}"
