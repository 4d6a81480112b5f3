"""GLIDER clients: SDK, CLI and environment runners."""
