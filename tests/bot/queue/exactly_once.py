"""Counting how often each job reaches a final status, for the exactly-once tests.

A trigger records every move from queued/running to done/failed/cancelled, so a test can tell
a job that ended twice from one that ended once, whatever the generations table says now.
"""

import sqlite3
from collections import Counter

FINALS_DDL = """
CREATE TABLE IF NOT EXISTS test_finals (gen_id INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS test_count_finals
AFTER UPDATE OF status ON generations
WHEN old.status IN ('queued', 'running') AND new.status IN ('done', 'failed', 'cancelled')
BEGIN
    INSERT INTO test_finals (gen_id, status) VALUES (new.id, new.status);
END;
"""


def finals(db) -> Counter:
    """How many times each generation id reached a final status."""
    with sqlite3.connect(db) as conn:
        return Counter(row[0] for row in conn.execute("SELECT gen_id FROM test_finals"))
