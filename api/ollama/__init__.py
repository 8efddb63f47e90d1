"""The Ollama flavour: /api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version."""
