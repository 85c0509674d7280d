"""Database layer: bounded pyodbc pool in worker threads, time limits, caps, read-only guard."""
