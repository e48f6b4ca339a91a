"""embedlib: executables -> byteplots -> CNN embeddings -> Parquet -> DuckDB similarity."""

__version__ = "0.1.0"
