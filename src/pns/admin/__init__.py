"""The admin API (``/admin/api/``) and what the console shares with it: operators, their
tokens and sessions, and the operator's view of the service. Nothing here is on the hot path."""
