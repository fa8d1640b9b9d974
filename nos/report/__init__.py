"""What a run found: tables, plots, and what ``nos inspect`` shows and retrains."""
