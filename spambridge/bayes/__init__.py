"""The local SpamBayes engine: tokenizer (email → tokens), store (SQLite token counts) and
the glue to sbclassifier's chi-squared combining."""
