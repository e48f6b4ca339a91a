"""Entry points: python -m jobs.<name>. Each parses arguments, builds a Config, calls embedlib, prints a summary."""
