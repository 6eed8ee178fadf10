"""User store: the only owner of PostgreSQL (users, applications, providers, tokens, signing keys)."""
