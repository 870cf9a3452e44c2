"""nanochat: the package behind the book. Each module holds one concept; chapters build it, then import it."""
