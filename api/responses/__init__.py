"""OpenAI's Responses API and its conversations, with their state in Redis."""
