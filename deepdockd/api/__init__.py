"""The HTTP layer: the app, its routes, middlewares and handlers. A handler reads its input,
calls one service and answers; the shapes of the answers live in answers.py, and each
streaming protocol (Server-Sent Events, NDJSON, a text relay) in handlers/streams.py."""
