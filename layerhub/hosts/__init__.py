"""Several machines: which host holds what, each host's health, and sending work to a host."""
