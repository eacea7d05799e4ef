"""The API's routers, one per concern, included by :func:`serving.app.create_app`."""
