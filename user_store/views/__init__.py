"""The user store's internal HTTP handlers, one module per surface; ``user_store/routes.py`` maps the URLs to them.
Each decodes its request at the edge (``user_store/http.py``), calls a use case and encodes a Struct.

- ``applications``: an application's public facts and its WeChat provider, for the gateway and the workers.
- ``logins``: the WeChat mini-program login an auth worker completes.
- ``token``: the refresh grant.
- ``introspection``: RFC 7662 introspection and RFC 7009 revocation.
- ``discovery``: the JWKS and the OpenID configuration.
- ``account``: the operations behind Casdoor's account API.
- ``health``: liveness and readiness.
"""
