//! A checked snapshot's SQL rearranged so that its keys and indexes are built after its data.
//!
//! `IMPORT DATABASE` runs `schema.sql` (tables with their primary keys, then every index) before
//! `load.sql`, so DuckDB maintains each ART index row by row while the tables load: at 16M hits that
//! is most of a restore, and under a 1 GiB memory limit a HitKeep 2.8 shared database does not import
//! at all. Built over loaded data, the same index is one sort-and-build. The plan keeps everything
//! else as written and in its order; what it moves:
//!
//! - every `CREATE [UNIQUE] INDEX` goes after the load;
//! - a table's `PRIMARY KEY` goes after the load as `ALTER TABLE … ADD PRIMARY KEY (…)`, unless the
//!   table also has a `UNIQUE`, `FOREIGN KEY` or named constraint, or another table's foreign key
//!   refers to it: DuckDB cannot add a `UNIQUE` or foreign key to an existing table, and a foreign
//!   key needs its target's key when it is created. Those tables load with their keys as `IMPORT`
//!   loads them. In HitKeep's schemas they are the small control tables (`sites`, `users`, …).
//!
//! The result has the same constraints (names, columns, texts), indexes, column types and defaults as
//! a plain `IMPORT` (a test compares `duckdb_constraints()`, `duckdb_indexes()` and `duckdb_columns()`);
//! only the order DuckDB lists a deferred key among its table's constraints differs. A duplicate key
//! fails the restore at `ADD PRIMARY KEY` instead of during the load.

use std::path::{Path, PathBuf};

use hitkeep_data::quote_literal;

use super::{
    Kind, LOAD, Refusal, SCHEMA, Token, closing, last_component, lex, name, refusal_at, split_list,
    statement_tokens, text_of, unquote, unquote_name,
};

/// What a restore runs, in three phases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImportPlan {
    /// `schema.sql` in its order, without indexes and without the primary keys of the tables whose
    /// [`TableBuild::key`] holds them.
    pub(crate) create: Vec<String>,
    /// `load.sql`'s `COPY`s in its order, each reading its files from the snapshot's folder as `IMPORT`
    /// rewrites them; consecutive Parquet `COPY`s of one table as one statement.
    pub(crate) load: Vec<Load>,
    /// Per table, what is built once every table is loaded.
    pub(crate) builds: Vec<TableBuild>,
}

/// One statement of the load: a `COPY` of `load.sql`, or one read of every file of a table that
/// `load.sql` copies in consecutive Parquet `COPY`s (an incremental snapshot's partitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    /// The table ([`TableId`]).
    pub(crate) table: TableId,
    /// The files it reads, in `load.sql`'s order.
    pub(crate) files: Vec<PathBuf>,
    /// The statement.
    pub(crate) sql: String,
}

/// A table's deferred key and its indexes. The key comes first: DuckDB refuses to alter a table that
/// has an index ("Cannot alter entry … because there are entries that depend on it").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableBuild {
    /// The table.
    pub(crate) table: TableId,
    /// The table's name as `schema.sql` writes it, for messages.
    pub(crate) written: String,
    /// `ALTER TABLE … ADD PRIMARY KEY (…)`.
    pub(crate) key: Option<String>,
    /// `CREATE [UNIQUE] INDEX …`, in `schema.sql`'s order.
    pub(crate) indexes: Vec<String>,
}

#[cfg(test)]
impl TableBuild {
    /// Its statements, key first.
    fn statements(&self) -> impl Iterator<Item = &str> {
        self.key
            .iter()
            .chain(self.indexes.iter())
            .map(String::as_str)
    }
}

/// A table as DuckDB resolves it: `schema.name`, both unquoted and lower-cased (DuckDB compares names
/// case-insensitively, quoted or not).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TableId(String);

impl TableId {
    fn of(sql: &str, parts: &[Token]) -> TableId {
        let names: Vec<String> = parts
            .iter()
            .filter(|t| t.kind != Kind::Number) // the `.` between parts
            .map(|t| unquote_name(t.text(sql)).to_lowercase())
            .collect();
        match names.as_slice() {
            [table] => TableId(format!("main.{table}")),
            _ => TableId(names.join(".")),
        }
    }
}

/// Rearranges the snapshot in `dir`; its `schema.sql` and `load.sql` must have passed
/// [`super::check_export`], which is what lets this read them by shape.
pub(crate) fn import_plan(dir: &Path) -> crate::Result<ImportPlan> {
    let read = |name: &str| -> crate::Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| crate::Error::io(path, e))
    };
    let folder = dir.display().to_string();
    let schema = read(SCHEMA)?;
    let load = read(LOAD)?;
    plan(&schema, &load, dir).map_err(|r| r.into_error(&folder))
}

fn plan(schema: &[u8], load: &[u8], dir: &Path) -> Result<ImportPlan, Refusal> {
    let mut plan = ImportPlan::default();
    let sql = text_of(SCHEMA, schema)?;
    let tokens = lex(sql).map_err(|(at, why)| refusal_at(SCHEMA, sql, at, why))?;
    let statements: Vec<&[Token]> = statement_tokens(&tokens)
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let referenced = referenced_tables(sql, &statements);
    for t in &statements {
        let text = &sql[t[0].start..t[t.len() - 1].end];
        if let Some((table, written, index)) = as_index(sql, t) {
            build_of(&mut plan.builds, table, written)
                .indexes
                .push(index.to_owned());
        } else if let Some(split) = as_table(sql, t).filter(|s| !referenced.contains(&s.table)) {
            plan.create.push(split.create);
            build_of(&mut plan.builds, split.table, split.written).key = split.key;
        } else {
            plan.create.push(text.to_owned());
        }
    }
    plan.builds
        .retain(|b| b.key.is_some() || !b.indexes.is_empty());
    plan.load = loads(load, dir)?;
    Ok(plan)
}

fn build_of(builds: &mut Vec<TableBuild>, table: TableId, written: String) -> &mut TableBuild {
    let at = match builds.iter().position(|b| b.table == table) {
        Some(at) => at,
        None => {
            builds.push(TableBuild {
                table,
                written,
                key: None,
                indexes: Vec::new(),
            });
            builds.len() - 1
        }
    };
    &mut builds[at]
}

/// `CREATE [UNIQUE] INDEX <name> ON <table> (…)`: the table, its name as written, the statement.
fn as_index<'s>(sql: &'s str, t: &[Token]) -> Option<(TableId, String, &'s str)> {
    let rest = match t.get(1)? {
        x if x.is_word(sql, "INDEX") => &t[2..],
        x if x.is_word(sql, "UNIQUE") && t.get(2)?.is_word(sql, "INDEX") => &t[3..],
        _ => return None,
    };
    let (_, after) = name(sql, rest)?;
    let on = after.first()?;
    let (parts, _) = name(sql, &after[1..])?;
    let table = &after[1..2 * parts];
    on.is_word(sql, "ON").then(|| {
        (
            TableId::of(sql, table),
            span(sql, table).to_owned(),
            span(sql, t),
        )
    })
}

/// A `CREATE TABLE` whose primary key can wait.
struct TableSplit {
    table: TableId,
    written: String,
    /// The statement without its primary key.
    create: String,
    key: Option<String>,
}

/// `CREATE TABLE <name>(<elements>)` with exactly one `PRIMARY KEY` and no constraint that must stay
/// (see the module comment); `None` leaves the statement as it is.
fn as_table(sql: &str, t: &[Token]) -> Option<TableSplit> {
    if !t.get(1)?.is_word(sql, "TABLE") {
        return None;
    }
    let (parts, after) = name(sql, &t[2..])?;
    let name_tokens = &t[2..2 + 2 * parts - 1];
    if !after.first()?.is_op(sql, "(") || closing(sql, after) != Some(after.len() - 1) {
        return None;
    }
    let body = &after[1..after.len() - 1];
    let keeps = ["UNIQUE", "REFERENCES", "FOREIGN", "CONSTRAINT"];
    if body.iter().any(|x| keeps.iter().any(|w| x.is_word(sql, w))) {
        return None;
    }
    let elements = split_list(sql, body);
    let mut found = None;
    for (i, element) in elements.iter().enumerate() {
        for (j, pair) in element.windows(2).enumerate() {
            if pair[0].is_word(sql, "PRIMARY") && pair[1].is_word(sql, "KEY") {
                if found.is_some() {
                    return None; // EXPORT writes one; two is not its shape
                }
                found = Some((i, j));
            }
        }
    }
    let (i, j) = found?;
    let element = elements[i];
    let (removed, columns) = if j == 0 {
        // `, PRIMARY KEY(a, b)`: from the end of the element before it to its own end.
        let cols = &element[2..];
        let whole = cols.first()?.is_op(sql, "(") && closing(sql, cols) == Some(cols.len() - 1);
        let before = elements.get(i.checked_sub(1)?)?.last()?;
        if !whole || cols.len() < 3 {
            return None;
        }
        (
            before.end..element.last()?.end,
            span(sql, &cols[1..cols.len() - 1]).to_owned(),
        )
    } else {
        // `id UUID … PRIMARY KEY …`: the two words and the space before them.
        let column = element.first()?;
        if !matches!(column.kind, Kind::Word | Kind::Quoted) || j < 2 {
            return None;
        }
        (
            element[j - 1].end..element[j + 1].end,
            column.text(sql).to_owned(),
        )
    };
    let whole = span(sql, t);
    let start = t[0].start;
    let create = format!(
        "{}{}",
        &whole[..removed.start - start],
        &whole[removed.end - start..]
    );
    let written = span(sql, name_tokens).to_owned();
    Some(TableSplit {
        table: TableId::of(sql, name_tokens),
        key: Some(format!("ALTER TABLE {written} ADD PRIMARY KEY ({columns})")),
        written,
        create,
    })
}

/// Every table a `REFERENCES` names: its key must exist when the foreign key is created.
fn referenced_tables(sql: &str, statements: &[&[Token]]) -> Vec<TableId> {
    let mut out = Vec::new();
    for t in statements {
        for (k, x) in t.iter().enumerate() {
            if x.is_word(sql, "REFERENCES")
                && let Some((parts, _)) = name(sql, &t[k + 1..])
            {
                out.push(TableId::of(sql, &t[k + 1..k + 2 * parts]));
            }
        }
    }
    out
}

/// `load.sql`'s `COPY <table> FROM '<file>' (<options>)`, the file read from `dir` as IMPORT reads it.
fn loads(load: &[u8], dir: &Path) -> Result<Vec<Load>, Refusal> {
    let sql = text_of(LOAD, load)?;
    let tokens = lex(sql).map_err(|(at, why)| refusal_at(LOAD, sql, at, why))?;
    let mut copies: Vec<CopyFrom> = Vec::new();
    for t in statement_tokens(&tokens) {
        if t.is_empty() {
            continue; // DuckDB 1.5's `;;`
        }
        let copy = copy_of(sql, t, dir)?;
        match copies.last_mut() {
            Some(last) if last.joins(&copy) => last.files.extend(copy.files),
            _ => copies.push(copy),
        }
    }
    Ok(copies.into_iter().map(CopyFrom::into_load).collect())
}

/// A `COPY` of `load.sql` as read, or consecutive ones of a table joined.
struct CopyFrom {
    table: TableId,
    written: String,
    files: Vec<PathBuf>,
    /// The options as written (`(FORMAT 'parquet')`), or empty.
    options: String,
}

impl CopyFrom {
    /// Whether `next` reads into the same table, both Parquet with no other option: then one
    /// statement reads both. One `COPY` per file committed each on its own, and at 4M hits the
    /// ~1,000 partitions of an incremental snapshot loaded in 47 s; read as one list per table, in
    /// 15 s (DuckDB 1.5, measured).
    fn joins(&self, next: &CopyFrom) -> bool {
        let parquet_only = |options: &str| {
            let bare: String = options.chars().filter(|c| !c.is_whitespace()).collect();
            ["(format'parquet')", "(formatparquet)"]
                .iter()
                .any(|o| bare.eq_ignore_ascii_case(o))
        };
        self.table == next.table && self.options == next.options && parquet_only(&self.options)
    }

    /// One file: the `COPY` as `IMPORT` rewrites it. Several: one `INSERT` reading them in order
    /// (`COPY … FROM` takes a pattern, not a list); columns by position as `COPY` matches them, and
    /// no `key=value` folder in the path read as a column. The reader is named in full: unqualified,
    /// a macro `read_parquet` of the snapshot's `schema.sql`, created before the load in the database
    /// it runs in, would be called instead (DuckDB resolves the current database first).
    fn into_load(self) -> Load {
        let quoted = |f: &PathBuf| quote_literal(&f.display().to_string());
        let sql = match self.files.as_slice() {
            [one] => format!(
                "COPY {} FROM {} {}",
                self.written,
                quoted(one),
                self.options
            ),
            many => format!(
                "INSERT INTO {} SELECT * FROM system.main.read_parquet([{}], hive_partitioning = false)",
                self.written,
                many.iter().map(quoted).collect::<Vec<_>>().join(", ")
            ),
        };
        Load {
            table: self.table,
            files: self.files,
            sql,
        }
    }
}

/// `COPY <table> FROM '<file>' [(<options>)]`, its file in `dir`.
fn copy_of(sql: &str, t: &[Token], dir: &Path) -> Result<CopyFrom, Refusal> {
    // The check refuses anything else first; the plan refuses it too rather than skip or
    // rewrite it (its own tests reach it without the check).
    let not_a_load = || {
        refusal_at(
            LOAD,
            sql,
            t[0].start,
            "a statement that is not `COPY <table> FROM '<file>'`",
        )
    };
    if !t[0].is_word(sql, "COPY") {
        return Err(not_a_load());
    }
    let (parts, after) = t
        .get(1..)
        .and_then(|rest| name(sql, rest))
        .ok_or_else(not_a_load)?;
    let table = &t[1..2 * parts];
    let [from, file, options @ ..] = after else {
        return Err(not_a_load());
    };
    if !from.is_word(sql, "FROM") || file.kind != Kind::Str {
        return Err(not_a_load());
    }
    Ok(CopyFrom {
        table: TableId::of(sql, table),
        written: span(sql, table).to_owned(),
        files: vec![dir.join(last_component(&unquote(file.text(sql))))],
        options: span(sql, options).to_owned(),
    })
}

/// The text from the first token to the last.
fn span<'s>(sql: &'s str, t: &[Token]) -> &'s str {
    match (t.first(), t.last()) {
        (Some(a), Some(z)) => &sql[a.start..z.end],
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(schema: &str, load: &str) -> ImportPlan {
        plan(schema.as_bytes(), load.as_bytes(), Path::new("/snap")).unwrap()
    }

    #[test]
    fn keys_and_indexes_move_after_the_load() {
        let p = plan_of(
            "CREATE TABLE hits(id UUID DEFAULT(uuidv7()) PRIMARY KEY, site_id UUID NOT NULL, \"timestamp\" TIMESTAMP);
CREATE TABLE r(site_id UUID, bucket DATE, n BIGINT NOT NULL, PRIMARY KEY(site_id, bucket));
CREATE INDEX hits_site_ts ON hits(site_id, \"timestamp\");
CREATE UNIQUE INDEX r_n ON main.r(n);
",
            "COPY hits FROM '/old/place/hits.parquet' (FORMAT 'PARQUET', compression 'ZSTD');\nCOPY r FROM 'r.parquet' (FORMAT 'PARQUET');\n",
        );
        assert_eq!(
            p.create,
            [
                "CREATE TABLE hits(id UUID DEFAULT(uuidv7()), site_id UUID NOT NULL, \"timestamp\" TIMESTAMP)",
                "CREATE TABLE r(site_id UUID, bucket DATE, n BIGINT NOT NULL)",
            ]
        );
        let builds: Vec<(&str, Vec<&str>)> = p
            .builds
            .iter()
            .map(|b| (b.table.0.as_str(), b.statements().collect()))
            .collect();
        assert_eq!(
            builds,
            [
                (
                    "main.hits",
                    vec![
                        "ALTER TABLE hits ADD PRIMARY KEY (id)",
                        "CREATE INDEX hits_site_ts ON hits(site_id, \"timestamp\")"
                    ]
                ),
                (
                    "main.r",
                    vec![
                        "ALTER TABLE r ADD PRIMARY KEY (site_id, bucket)",
                        "CREATE UNIQUE INDEX r_n ON main.r(n)"
                    ]
                ),
            ]
        );
        assert_eq!(
            p.load[0].sql,
            "COPY hits FROM '/snap/hits.parquet' (FORMAT 'PARQUET', compression 'ZSTD')"
        );
        assert_eq!(p.load[1].files, [Path::new("/snap/r.parquet")]);
        assert_eq!(p.load[1].table, TableId("main.r".into()));
    }

    #[test]
    fn keys_that_must_exist_while_loading_stay_where_they_are() {
        let schema = "CREATE TABLE sites(id UUID PRIMARY KEY, domain VARCHAR);
CREATE TABLE users(id UUID PRIMARY KEY, email VARCHAR NOT NULL UNIQUE);
CREATE TABLE ai(id UUID PRIMARY KEY, site_id UUID, FOREIGN KEY (site_id) REFERENCES sites(id));
CREATE TABLE s2.\"T;2\"(a INTEGER, b VARCHAR, UNIQUE(a));
CREATE TABLE plain(a INTEGER);
CREATE VIEW v AS SELECT 1 AS primary_key;
";
        let p = plan_of(schema, "");
        let kept: Vec<&str> = schema.lines().map(|l| l.trim_end_matches(';')).collect();
        assert_eq!(p.create, kept, "nothing deferred");
        assert!(p.builds.is_empty());
    }

    #[test]
    fn names_resolve_as_duckdb_resolves_them() {
        let p = plan_of(
            "CREATE SCHEMA s2;\nCREATE TABLE s2.\"Big\"(\"Id\" INTEGER PRIMARY KEY);\nCREATE INDEX i ON S2.big(\"Id\");\n",
            "COPY s2.\"Big\" FROM 'x/s2_Big.parquet' (FORMAT 'PARQUET');\n",
        );
        assert_eq!(p.builds.len(), 1, "{p:?}");
        assert_eq!(p.builds[0].table, TableId("s2.big".into()));
        assert_eq!(
            p.builds[0].key.as_deref(),
            Some("ALTER TABLE s2.\"Big\" ADD PRIMARY KEY (\"Id\")")
        );
        assert_eq!(p.load[0].table, TableId("s2.big".into()));
        assert_eq!(
            p.load[0].sql,
            "COPY s2.\"Big\" FROM '/snap/s2_Big.parquet' (FORMAT 'PARQUET')"
        );
    }

    /// DuckDB 1.5 (HitKeep Go) ends every statement with `;;`.
    #[test]
    fn empty_statements_of_duckdb_1_5_are_skipped() {
        let p = plan_of(
            "CREATE TABLE t(id INTEGER PRIMARY KEY);;\nCREATE INDEX i ON t(id);;\n",
            "COPY t FROM 'a/t.parquet' (FORMAT 'parquet');;\n",
        );
        assert_eq!(p.create, ["CREATE TABLE t(id INTEGER)"]);
        assert_eq!(p.builds[0].statements().count(), 2);
        assert_eq!(p.load.len(), 1);
    }

    #[test]
    fn consecutive_parquet_copies_of_a_table_load_as_one_statement() {
        let p = plan_of(
            "CREATE TABLE t(a INTEGER);\nCREATE TABLE u(a INTEGER);\n",
            "COPY t FROM 't.1.parquet' (FORMAT 'parquet');\nCOPY t FROM 'x/t.2.parquet' (FORMAT 'parquet');\n\
             COPY t FROM 't.3.parquet' ( format  PARQUET );\nCOPY t FROM 't.4.parquet' ( format  PARQUET );\n\
             COPY u FROM 'u.1.parquet' (FORMAT 'parquet');\nCOPY t FROM 't.5.parquet' (FORMAT 'parquet');\n\
             COPY u FROM 'u.2.csv' (FORMAT 'csv');\nCOPY u FROM 'u.3.csv' (FORMAT 'csv');\n",
        );
        let sql: Vec<&str> = p.load.iter().map(|l| l.sql.as_str()).collect();
        let read = |files: &str| {
            format!(
                "INSERT INTO t SELECT * FROM system.main.read_parquet([{files}], hive_partitioning = false)"
            )
        };
        assert_eq!(
            sql,
            [
                read("'/snap/t.1.parquet', '/snap/t.2.parquet'").as_str(),
                read("'/snap/t.3.parquet', '/snap/t.4.parquet'").as_str(),
                "COPY u FROM '/snap/u.1.parquet' (FORMAT 'parquet')",
                "COPY t FROM '/snap/t.5.parquet' (FORMAT 'parquet')",
                "COPY u FROM '/snap/u.2.csv' (FORMAT 'csv')",
                "COPY u FROM '/snap/u.3.csv' (FORMAT 'csv')",
            ],
            "only consecutive Parquet copies of one table, written alike, are joined"
        );
        assert_eq!(p.load[1].files.len(), 2);
    }

    /// Not reached past the check, but a load the plan cannot read is refused, never skipped.
    #[test]
    fn a_load_statement_that_is_not_a_copy_from_a_file_is_refused() {
        for load in [
            "COPY t;\n",
            "SELECT 1;\n",
            "SELECT t FROM 'x';\n",
            "COPY t TO 'x';\n",
        ] {
            let refused = plan(
                b"CREATE TABLE t(id INTEGER);\n",
                load.as_bytes(),
                Path::new("/snap"),
            )
            .map(|p| p.load.len())
            .unwrap_err();
            assert_eq!(refused.file, LOAD, "{load}");
        }
    }
}
