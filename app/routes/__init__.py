"""The HTTP routes, one module per resource; ``app.api.create_app`` assembles them."""
