"""What is kept of a job so that any replica can resume its stream: the neutral job, its
prompt's token count, and how its request wanted the answer (its flavour's format).

Stored at admission (`keys.job_spec`, in the admission's transaction) and read back by
`GET /v1/jobs/{id}/events` and by requests that join a job (api/resume.py).
"""

from typing import Annotated

from pydantic import BaseModel, Field

from api.anthropic.serving import MessagesFormat
from api.ollama import serving as ollama
from api.openai import serving as openai
from api.responses.serving import ResponsesFormat
from shared.job import GenerationJob

Format = Annotated[
    openai.ChatFormat
    | openai.CompletionFormat
    | MessagesFormat
    | ollama.GenerateFormat
    | ollama.ChatFormat
    | ResponsesFormat,
    Field(discriminator="kind"),
]


class JobSpec(BaseModel):
    job: GenerationJob
    prompt_tokens: int
    format: Format
