"""The gateway's public HTTP handlers, one module per surface; ``gateway/routes.py`` maps the URLs to them.

- ``token``: the token endpoint (mini-program login and the refresh grant) and Casdoor's refresh endpoint.
- ``introspection``: RFC 7662 introspection and RFC 7009 revocation, for clients holding their credentials.
- ``discovery``: the JWKS and the OpenID configuration.
- ``account``: Casdoor's account API (``/api/get-account`` and the like), in Casdoor's envelope.
- ``health``: liveness and readiness.
"""
