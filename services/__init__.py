"""How the services run together: the local runner, embedded infrastructure, the WeChat sandbox, admin CLI."""
