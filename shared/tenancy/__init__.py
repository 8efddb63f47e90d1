"""Who calls the API and how much they may: API keys (`apikeys`) and their rate quotas
(`quota`). The API authenticates and charges at admission; the worker charges the tokens a
job generated when it ends; `tokenq keys` manages the keys."""
