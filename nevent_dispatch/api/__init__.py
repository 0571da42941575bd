"""The management API: the Nevent application drives webhooks over HTTP.

``app.py`` holds the server, its middlewares and listener; ``http.py`` what the routes
share (keys, errors, body and query reading); ``auth.py`` the tokens;
``webhooks.py`` and ``deliveries.py`` one module per resource; ``openapi.py`` the
document. The routes reach the domain only through ``registry`` and ``history``,
the same path as the CLI, and serialize only through ``views``. Nothing is imported
here: the CLI reads the token file (``auth``) without aiohttp's server side.
"""
