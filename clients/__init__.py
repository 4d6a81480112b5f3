"""GLIDER clients: the SDK, the play loop, the evaluation harness, environment runners and the CLI."""
