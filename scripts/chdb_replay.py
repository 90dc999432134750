#!/usr/bin/env python3
"""Replays the statements the topk binaries sent to the local ClickHouse (18.16) on current
ClickHouse, embedded in-process by chDB, and reports every statement that fails there.

Input: the `system.query_log` rows of one run (JSONEachRow: at, the second it finished; query), written by
scripts/check-current-clickhouse.sh. The schema comes from the migration files in sql/ (split as
`topk_core::migrate::statements` splits them); the logged copies of those statements are
skipped. Inserts whose data travelled in the request body (`INSERT .. FORMAT RowBinary`) cannot
be replayed: their column lists are checked against the table instead. Statements run in
the order the log holds them (by the second, then as stored).

Usage: chdb_replay.py QUERY_LOG.jsonl DATABASE SQL_DIR
"""

import json
import re
import sys
import tempfile
from pathlib import Path

import chdb
from chdb import session as chdb_session


def migration_files(sql_dir):
    """The statements of each migration file, in order."""
    files = []
    for path in sorted(Path(sql_dir).glob("[0-9]*.sql")):
        statements = []
        current = []
        for line in path.read_text().splitlines():
            trimmed = line.strip()
            if not trimmed or trimmed.startswith("--"):
                continue
            current.append(line)
            if trimmed.endswith(";"):
                statements.append("\n".join(current).strip().rstrip(";").strip())
                current = []
        if current:
            statements.append("\n".join(current).strip())
        files.append(statements)
    return files


REBUILT_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS\s+`?(\w+)_rebuilt`?", re.IGNORECASE)


def rebuilt_tables(statements):
    """The tables a migration file rebuilds (topk_core::migrate: `<table>_rebuilt`)."""
    return [m.group(1) for m in map(REBUILT_TABLE.match, statements) if m]


def normalized(sql):
    return " ".join(sql.split()).rstrip(";").strip()


INSERT_WITH_BODY = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>[`\w.]+)\s*(?:\((?P<columns>[^)]*)\))?\s*FORMAT\s+\w+\s*$",
    re.IGNORECASE | re.DOTALL,
)


def replayable(sql):
    """The statement to run for a logged one: an insert whose rows came in the body becomes
    a check that its columns exist."""
    match = INSERT_WITH_BODY.match(sql)
    if not match:
        return sql
    columns = match.group("columns") or "*"
    return f"SELECT {columns} FROM {match.group('table')} LIMIT 0"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    log_path, database, sql_dir = sys.argv[1:]
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    files = migration_files(sql_dir)
    migration_texts = {normalized(statement) for statements in files for statement in statements}
    # The runner rebuilds a table right after the file that creates `<table>_rebuilt`, before
    # the next file; its logged statements (copy, renames, drop) are replayed there too.
    rebuild_rows = {}
    for statements in files:
        for table in rebuilt_tables(statements):
            rebuild_rows[table] = [
                index
                for index, row in enumerate(rows)
                if normalized(row["query"]) not in migration_texts
                and (f"{table}_rebuilt" in row["query"] or f"{table}_before_rebuild" in row["query"])
            ]

    workdir = tempfile.mkdtemp(prefix="topk-chdb-")
    sess = chdb_session.Session(workdir)
    version = sess.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    print(f"chDB {chdb.__version__}: ClickHouse {version}", flush=True)
    sess.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    sess.query(f"USE `{database}`")
    # A server runs mutations in the background; chDB's default waits for them.
    sess.query("SET mutations_sync = 0")
    # Inserts whose rows came in the request body insert nothing here, so a staging table the
    # restore fills is empty when it is swapped in; ClickHouse >= 26.6 refuses that swap. The
    # code itself never swaps an empty source (archive/src/restore.rs drops the day instead).
    try:
        sess.query("SET allow_replace_partition_from_empty_source = 1")
    except Exception:  # older releases: no such setting, and no such refusal
        pass

    failures = []
    replayed = 0
    in_rebuild = set()
    for statements in files:
        for statement in statements:
            try:
                sess.query(statement)
            except Exception as error:  # chDB raises its own error types
                failures.append(("migration", statement, str(error)))
        for table in rebuilt_tables(statements):
            for index in rebuild_rows[table]:
                in_rebuild.add(index)
                try:
                    sess.query(replayable(rows[index]["query"]))
                    replayed += 1
                except Exception as error:  # chDB raises its own error types
                    failures.append((rows[index]["at"], rows[index]["query"], str(error)))

    logged = 0
    skipped = 0
    for index, row in enumerate(rows):
        sql = row["query"]
        logged += 1
        if index in in_rebuild:
            continue
        if normalized(sql) in migration_texts:
            skipped += 1
            continue
        try:
            sess.query(replayable(sql))
            replayed += 1
        except Exception as error:  # chDB raises its own error types
            failures.append((row["at"], sql, str(error)))

    print(
        f"replayed {replayed} of {logged - skipped} logged statements "
        f"({skipped} migration statements applied from {sql_dir} instead)"
    )
    seen = set()
    for where, sql, error in failures:
        key = (normalized(sql)[:200], error.splitlines()[0][:200] if error else "")
        if key in seen:
            continue
        seen.add(key)
        print(f"\nFAILED ({where}): {normalized(sql)[:600]}\n  {error.strip()[:800]}")
    if failures:
        print(f"\n{len(failures)} statements failed on ClickHouse {version}")
        sys.exit(1)
    print(f"every statement ran on ClickHouse {version}")


if __name__ == "__main__":
    main()
