"""The authenticated proxy to the containers' services: a browser's short-lived session
cookies (sessions.py) and the relay of HTTP and WebSocket traffic (relay.py)."""
