"""Judges that compare or score policy replies: an LLM behind an OpenAI-compatible endpoint (``llm``)."""
