"""Gateway: the stateless public HTTP API."""
