"""``python -m glider.clients.cli ...``: how the demo, the benches and the Kubernetes jobs start a command."""

from glider.clients.cli import app

app()
