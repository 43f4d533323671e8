"""The handlers, by area; routes.py lists them all in openapi.yaml's order."""
