"""OpenAI-compatible HTTP server, written against the EngineClient interface."""
