"""Model, tokenizer and value-head construction."""
