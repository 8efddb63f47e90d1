"""`tokenq chat`: an interactive terminal chat with any tokenq server.

It speaks only tokenq's public HTTP API (OpenAI chat completions, streamed; the job routes to
cancel), so it imports neither `api` nor `worker` and works against a remote server as well.
"""
