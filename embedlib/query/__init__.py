"""SQL over embedlib's output root with DuckDB: views, similarity macros, analytics, the `embedlib` command.

  con = embedlib.query.connect("s3://bucket/embedlib")          # or a local folder
  con.sql("SELECT * FROM similar('<sha256>', 10)")
  con.sql("SELECT * FROM attribution WHERE run_id = '...'")

Every SQL statement lives in embedlib/sql/; parameters are bound, never pasted.
May import: errors, config, schema, sql, files, root, model (embedding a --file). Never Ray: the kNN fan-out
is handed in by the job.
"""

from embedlib.query.analytics import (ask, attribution, explain, near_duplicate_groups, run_sql,
                                      similar, similar_to_vector, stored_neighbors)
from embedlib.query.connect import connect, open_database
from embedlib.sql import sql_text
from embedlib.query.errors import QueryError
from embedlib.query.fmt import format_rows

__all__ = ["QueryError", "ask", "attribution", "connect", "explain", "format_rows", "near_duplicate_groups",
           "open_database", "run_sql", "similar", "similar_to_vector", "sql_text", "stored_neighbors"]
