"""Reads HitKeep databases for `cargo xtask e2e` with DuckDB 1.5 (what HitKeep Go ships).

fingerprint DB DATA      JSON {"shared": {...}, "tenants/<uuid>": {...}} for DB and DATA/tenants/*/hitkeep.db
fingerprint-file DB      JSON {table: [rows, hash]} for one file
mark DB N                adds row N to the table e2e_marker (created when missing)
"""
import glob
import json
import os
import sys

import duckdb


def fingerprint_file(path):
    con = duckdb.connect(path, read_only=True)
    try:
        tables = con.execute(
            "select schema_name, table_name from duckdb_tables() "
            "where database_name = current_database() order by 1, 2"
        ).fetchall()
        out = {}
        for schema, table in tables:
            # hash(x) hashes the whole row; the sum is order-independent and keeps duplicates.
            rows, digest = con.execute(
                f'select count(*), coalesce(sum(hash(x)::hugeint), 0)::varchar from "{schema}"."{table}" x'
            ).fetchone()
            out[f"{schema}.{table}"] = [rows, digest]
        return out
    finally:
        con.close()


def main():
    cmd = sys.argv[1]
    if cmd == "fingerprint":
        db, data = sys.argv[2], sys.argv[3]
        out = {}
        if os.path.exists(db):
            out["shared"] = fingerprint_file(db)
        for path in sorted(glob.glob(os.path.join(data, "tenants", "*", "hitkeep.db"))):
            out["tenants/" + os.path.basename(os.path.dirname(path))] = fingerprint_file(path)
        print(json.dumps(out))
    elif cmd == "fingerprint-file":
        print(json.dumps(fingerprint_file(sys.argv[2])))
    elif cmd == "import-fingerprint":
        # A bare IMPORT DATABASE, as HitKeep's own restore runs it, then the fingerprint.
        folder, db = sys.argv[2], sys.argv[3]
        con = duckdb.connect(db)
        con.execute("IMPORT DATABASE '" + folder.replace("'", "''") + "'")
        con.execute("checkpoint")
        con.close()
        print(json.dumps(fingerprint_file(db)))
    elif cmd == "mark":
        con = duckdb.connect(sys.argv[2])
        con.execute("create table if not exists e2e_marker (n integer)")
        con.execute("insert into e2e_marker values (?)", [int(sys.argv[3])])
        con.execute("checkpoint")
        con.close()
    else:
        sys.exit(f"unknown command {cmd}")


main()
