"""`muse serve`'s server: the engine (any `Backend`) behind an OpenAI-compatible HTTP API.

    server = await Server(engine, ServeConfig(port=8000, api_key=key)).start()
    ...  # POST {server.base_url}/chat/completions, GET {server.base_url}/models, GET /health
    server.stop_accepting(); await engine.aclose(grace_s); await server.close()

Parsing is generation/serve/parse.py, the response objects generation/serve/responses.py, the
handlers and middlewares generation/serve/app.py, listening generation/serve/server.py.
"""

from generation.serve.app import ServeConfig, create_app
from generation.serve.server import ServeConfigError, Server, check_bind, is_loopback

__all__ = ["ServeConfig", "ServeConfigError", "Server", "check_bind", "create_app", "is_loopback"]
