//! A snapshot is data: before anything is imported, `schema.sql` and `load.sql` are checked against what
//! `EXPORT DATABASE` writes, without executing anything.
//!
//! `IMPORT DATABASE` runs `schema.sql` as written and `load.sql` after re-serialising its `COPY`
//! statements with each file path replaced by `<import dir>/<last path component>`. A snapshot's digests
//! are not signed and HitKeep Go's snapshots have none, so whoever can write to the bucket could make a
//! restore run `COPY (…) TO '/any/file'`, `ATTACH`, `INSTALL`/`LOAD` or a `CREATE TABLE … AS SELECT`.
//!
//! `schema.sql` may hold only `CREATE SCHEMA/SEQUENCE/TYPE/TABLE/INDEX/VIEW/MACRO` in the shapes EXPORT
//! writes (DuckDB 1.5 and 2.0 write the same; 1.5 doubles the `;`), and `load.sql` only
//! `COPY <table> FROM '<a file of this snapshot>' (<literal options>)`.
//!
//! Why a tokenizer of our own and not DuckDB's parser: `json_serialize_sql()` serialises SELECT statements
//! only, and preparing a statement binds it (an `ATTACH` or a `PRAGMA` is resolved while binding), so
//! neither splits and classifies this text without running some of it. What decides where DuckDB 2.0's
//! statements start and end is its tokenizer (`src/parser/peg/tokenizer/base_tokenizer.cpp`; the grammar
//! has `;` only between statements), whose rules are ported below as they are: strings with `''`,
//! `"…"` names, `--` and nested `/* */` comments, and the places a word, a number or an operator ends.
//! What DuckDB reads in a way we do not model is refused outright, at the first sight of it: `$`
//! (dollar quoting), `E'…'` and the other prefixed strings, backtick names, the Unicode spaces DuckDB
//! rewrites to blanks before tokenizing (U+00A0 and friends: they can turn one word into two, and the
//! second into a string prefix), NUL, and text that ends inside a string, name or comment (schema.sql
//! and load.sql are joined into one text, so an open comment would swallow load.sql). EXPORT writes
//! none of these.

use std::path::Path;

use crate::error::{Error, Result};

mod plan;

pub(crate) use plan::{ImportPlan, TableBuild, import_plan};

/// Why a snapshot's SQL is refused: the file, the statement (shortened) and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `schema.sql` or `load.sql`.
    pub(crate) file: &'static str,
    /// The statement, shortened for a message.
    pub(crate) statement: String,
    /// What is wrong with it.
    pub(crate) why: String,
}

impl Refusal {
    /// The error naming `snapshot` (its folder, e.g. `shared/2026-01-01T000000Z`).
    pub(crate) fn into_error(self, snapshot: &str) -> Error {
        Error::ForeignStatement {
            snapshot: snapshot.to_owned(),
            file: self.file,
            statement: self.statement,
            why: self.why,
        }
    }
}

/// Checks `schema.sql` and `load.sql` in `dir`, a downloaded snapshot, before it is imported.
/// `snapshot` names it in the error.
pub(crate) fn check_export(dir: &Path, snapshot: &str) -> Result<()> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(path, e))
    };
    let schema = read(SCHEMA)?;
    let load = read(LOAD)?;
    check_schema(&schema)
        .and_then(|()| check_load(&load, dir))
        .map_err(|r| r.into_error(snapshot))
}

const SCHEMA: &str = "schema.sql";
const LOAD: &str = "load.sql";

/// The statements of `schema.sql`.
pub(crate) fn check_schema(bytes: &[u8]) -> Result<(), Refusal> {
    let file = SCHEMA;
    let text = text_of(file, bytes)?;
    let lexed = lex(text).map_err(|(at, why)| refusal_at(file, text, at, why))?;
    if let Some(last) = lexed.last()
        && last.kind != Kind::End
    {
        return Err(refusal(
            file,
            text,
            statement_tokens(&lexed).last().map_or(&[][..], |s| *s),
            "schema.sql must end with `;`: IMPORT joins load.sql right after it",
        ));
    }
    for statement in statement_tokens(&lexed) {
        schema_statement(text, statement).map_err(|why| refusal(file, text, statement, why))?;
    }
    Ok(())
}

/// The statements of `load.sql`; `dir` holds the snapshot's files.
pub(crate) fn check_load(bytes: &[u8], dir: &Path) -> Result<(), Refusal> {
    let file = LOAD;
    let text = text_of(file, bytes)?;
    let lexed = lex(text).map_err(|(at, why)| refusal_at(file, text, at, why))?;
    for statement in statement_tokens(&lexed) {
        load_statement(text, statement, dir).map_err(|why| refusal(file, text, statement, why))?;
    }
    Ok(())
}

/// The file as UTF-8 text (DuckDB refuses anything else), without the characters DuckDB rewrites before
/// it tokenizes (see the module comment).
fn text_of<'a>(file: &'static str, bytes: &'a [u8]) -> Result<&'a str, Refusal> {
    let text = std::str::from_utf8(bytes).map_err(|e| Refusal {
        file,
        statement: shorten(&String::from_utf8_lossy(&bytes[..e.valid_up_to()])),
        why: format!("the file is not UTF-8 after byte {}", e.valid_up_to()),
    })?;
    if let Some((at, c)) = text.char_indices().find(|(_, c)| is_rewritten(*c)) {
        return Err(refusal_at(
            file,
            text,
            at,
            format!(
                "it holds U+{:04X}, which DuckDB rewrites before splitting statements",
                u32::from(c)
            ),
        ));
    }
    Ok(text)
}

/// NUL, and the Unicode spaces DuckDB's `Parser::StripUnicodeSpaces` turns into blanks outside what it
/// takes for quotes.
fn is_rewritten(c: char) -> bool {
    matches!(
        c,
        '\0' | '\u{a0}' | '\u{2000}'
            ..='\u{200b}' | '\u{202f}' | '\u{205f}' | '\u{2060}' | '\u{3000}' | '\u{feff}'
    )
}

// ---------------------------------------------------------------------------------------------------
// Tokens, split the way DuckDB 2.0's tokenizer splits them.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A keyword or an unquoted name.
    Word,
    /// A `"…"` name.
    Quoted,
    /// A `'…'` string.
    Str,
    /// A number, or a lone `.` between the parts of a name.
    Number,
    /// Punctuation and operators.
    Op,
    /// `;`.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    fn is_word(&self, sql: &str, word: &str) -> bool {
        self.kind == Kind::Word && self.text(sql).eq_ignore_ascii_case(word)
    }

    fn is_op(&self, sql: &str, op: &str) -> bool {
        self.kind == Kind::Op && self.text(sql) == op
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Standard,
    Str,
    Quoted,
    LineComment,
    BlockComment(usize),
    Keyword,
    Numeric,
    Operator,
}

/// DuckDB's `Tokenizer::IsSingleByteOperator`.
fn is_single_byte_op(c: u8) -> bool {
    matches!(
        c,
        b'(' | b')' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'?' | b'$' | b'#'
    )
}

/// DuckDB's `StringUtil::CharacterIsOperator`: ASCII punctuation but `_`.
fn is_punctuation(c: u8) -> bool {
    c != b'_' && c.is_ascii_punctuation()
}

/// DuckDB's `StringUtil::CharacterIsSpace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// DuckDB's `Tokenizer::CharacterIsKeyword`.
fn is_keyword_char(c: u8) -> bool {
    !is_single_byte_op(c)
        && !is_punctuation(c)
        && !is_space(c)
        && !matches!(c, b'\'' | b';' | b'"' | b'.')
}

/// DuckDB's `Tokenizer::CharacterIsOperator`: what continues an operator.
fn is_operator_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'^'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'&'
            | b'|'
    )
}

fn is_initial_number(c: u8) -> bool {
    c.is_ascii_digit() || c == b'.'
}

fn is_scientific(c: u8) -> bool {
    matches!(c, b'e' | b'E')
}

/// The tokens of `sql` (comments dropped), or where and why it is refused. A port of DuckDB 2.0's
/// `Tokenizer::TokenizeInputInternal` that refuses what it does not model (see the module comment).
fn lex(sql: &str) -> Result<Vec<Token>, (usize, String)> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut tokens = Vec::new();
    let push = |tokens: &mut Vec<Token>, kind, start, end| {
        if start < end {
            tokens.push(Token { kind, start, end });
        }
    };
    // DuckDB's `PushOperatorToken`: an operator ends in `+` or `-` only if it also holds one of
    // `~ ! @ # % ^ & | ?` or a backtick; other trailing signs are tokens of their own (`:=-1` is `:=`,
    // `-`, `1`).
    let push_operator = |tokens: &mut Vec<Token>, start: usize, end: usize| {
        let special = b[start..end].iter().any(|c| {
            matches!(
                c,
                b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
            )
        });
        let mut cut = end;
        while !special && cut > start + 1 && matches!(b[cut - 1], b'+' | b'-') {
            cut -= 1;
        }
        push(tokens, Kind::Op, start, cut);
        for sign in cut..end {
            push(tokens, Kind::Op, sign, sign + 1);
        }
    };
    let mut state = State::Standard;
    let mut last = 0;
    let mut i = 0;
    while i < n {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match state {
            State::Standard => {
                if c == b'\'' {
                    (state, last) = (State::Str, i);
                } else if c == b'"' {
                    (state, last) = (State::Quoted, i);
                } else if c == b'`' {
                    return Err((i, "a name in backticks, which EXPORT never writes".into()));
                } else if c == b';' {
                    push(&mut tokens, Kind::End, i, i + 1);
                    last = i + 1;
                } else if c == b'$' {
                    return Err((i, dollar()));
                } else if c == b'-' && next == Some(b'-') {
                    i += 1;
                    state = State::LineComment;
                } else if c == b'/' && next == Some(b'*') {
                    i += 1;
                    state = State::BlockComment(1);
                } else if is_space(c) {
                    last = i + 1;
                } else if c == b':' && matches!(next, Some(b':' | b'=')) {
                    if b.get(i + 2).copied().is_some_and(is_operator_char) {
                        (state, last) = (State::Operator, i);
                    } else {
                        push(&mut tokens, Kind::Op, i, i + 2);
                        i += 1;
                        last = i + 1;
                    }
                } else if is_single_byte_op(c) {
                    push(&mut tokens, Kind::Op, i, i + 1);
                    last = i + 1;
                } else if is_initial_number(c) {
                    (state, last) = (State::Numeric, i);
                } else if matches!(c, b'N' | b'n' | b'X' | b'x' | b'E' | b'e' | b'B' | b'b')
                    && next == Some(b'\'')
                {
                    return Err((
                        i,
                        format!(
                            "a {}'…' string, which EXPORT never writes",
                            char::from(c).to_ascii_uppercase()
                        ),
                    ));
                } else if is_punctuation(c) {
                    (state, last) = (State::Operator, i);
                } else {
                    (state, last) = (State::Keyword, i);
                }
            }
            State::Numeric => {
                let more = is_initial_number(c)
                    || (c == b'_'
                        && b[i - 1].is_ascii_digit()
                        && next.is_some_and(|d| d.is_ascii_digit()))
                    || (is_scientific(c)
                        && !is_scientific(b[i - 1])
                        && (b[last].is_ascii_digit() || b[i - 1].is_ascii_digit()))
                    || (matches!(c, b'+' | b'-') && is_scientific(b[i - 1]));
                if !more {
                    // DuckDB gives back what cannot end a number (`1e` before a quote: `e'…'`
                    // is then a string of its own) and reads it again.
                    while !is_initial_number(b[i - 1]) {
                        i -= 1;
                    }
                    push(&mut tokens, Kind::Number, last, i);
                    (state, last) = (State::Standard, i);
                    continue;
                }
            }
            State::Operator => {
                let comment =
                    (c == b'-' && next == Some(b'-')) || (c == b'/' && next == Some(b'*'));
                if comment || !is_operator_char(c) {
                    push_operator(&mut tokens, last, i);
                    (state, last) = (State::Standard, i);
                    continue;
                }
            }
            State::Keyword => {
                if c == b'$' {
                    return Err((i, dollar()));
                }
                if !is_keyword_char(c) {
                    push(&mut tokens, Kind::Word, last, i);
                    (state, last) = (State::Standard, i);
                    continue;
                }
            }
            State::Str | State::Quoted => {
                let quote = if state == State::Str { b'\'' } else { b'"' };
                if c == quote {
                    if next == Some(quote) {
                        i += 1;
                    } else {
                        let kind = if state == State::Str {
                            Kind::Str
                        } else {
                            Kind::Quoted
                        };
                        push(&mut tokens, kind, last, i + 1);
                        (state, last) = (State::Standard, i + 1);
                    }
                }
            }
            State::LineComment => {
                if matches!(c, b'\n' | b'\r') {
                    (state, last) = (State::Standard, i + 1);
                }
            }
            State::BlockComment(depth) => {
                if c == b'/' && next == Some(b'*') {
                    i += 1;
                    state = State::BlockComment(depth + 1);
                } else if c == b'*' && next == Some(b'/') {
                    i += 1;
                    state = if depth == 1 {
                        last = i + 1;
                        State::Standard
                    } else {
                        State::BlockComment(depth - 1)
                    };
                }
            }
        }
        i += 1;
    }
    match state {
        State::Standard => {}
        State::Keyword => push(&mut tokens, Kind::Word, last, n),
        State::Numeric => push(&mut tokens, Kind::Number, last, n),
        State::Operator => push_operator(&mut tokens, last, n),
        State::Str => return Err((last, "a string that is never closed".into())),
        State::Quoted => return Err((last, "a name whose quote is never closed".into())),
        State::LineComment | State::BlockComment(_) => {
            return Err((
                last,
                "the text ends inside a comment, which would swallow what IMPORT reads next".into(),
            ));
        }
    }
    Ok(tokens)
}

fn dollar() -> String {
    "a `$` (dollar quoting or a parameter), which EXPORT never writes".into()
}

/// The statements: the tokens between `;`s, without them. Empty ones (DuckDB 1.5 writes `;;`) are kept.
fn statement_tokens(tokens: &[Token]) -> Vec<&[Token]> {
    let mut out: Vec<&[Token]> = tokens.split(|t| t.kind == Kind::End).collect();
    if tokens.last().is_none_or(|t| t.kind == Kind::End) {
        out.pop(); // nothing after the last `;`
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// What EXPORT writes.

/// Words that start a query: inside CREATE TABLE, TYPE or INDEX one would run while the schema is
/// created (`CREATE TABLE … AS SELECT`, `CREATE TYPE … AS ENUM (SELECT …)`). EXPORT writes none there;
/// names that are keywords come quoted.
const QUERY_WORDS: [&str; 9] = [
    "SELECT",
    "FROM",
    "VALUES",
    "TABLE",
    "PIVOT",
    "UNPIVOT",
    "SUMMARIZE",
    "DESCRIBE",
    "SHOW",
];

/// The tables the restore itself reads from an imported shared database (`hitkeep_data::tenant_set`,
/// which names them unqualified). A view under one of these names would run in its place; EXPORT of
/// a HitKeep database writes them as tables.
const RESTORE_READS: [&str; 3] = ["data_migrations", "tenants", "tenant_archives"];

const SCHEMA_KINDS: &str =
    "schema.sql holds only CREATE SCHEMA, SEQUENCE, TYPE, TABLE, INDEX, VIEW and MACRO";

/// One statement of schema.sql: `Ok` when EXPORT writes its like.
fn schema_statement(sql: &str, t: &[Token]) -> Result<(), String> {
    if t.is_empty() {
        return Ok(());
    }
    if !t[0].is_word(sql, "CREATE") {
        let first = t[0].text(sql).to_ascii_uppercase();
        return Err(format!("{first} is not a CREATE; {SCHEMA_KINDS}"));
    }
    let Some(kind) = t.get(1) else {
        return Err(SCHEMA_KINDS.into());
    };
    let kind_word = kind.text(sql).to_ascii_uppercase();
    let rest = &t[2..];
    match kind_word.as_str() {
        _ if kind.kind != Kind::Word => Err(SCHEMA_KINDS.into()),
        "SCHEMA" => match name(sql, rest) {
            Some((1, [])) => Ok(()),
            _ => Err("EXPORT writes CREATE SCHEMA <name> and nothing more".into()),
        },
        "SEQUENCE" => {
            let (_, after) = name(sql, rest).ok_or("a sequence without a name")?;
            let plain = after.iter().all(|x| {
                matches!(x.kind, Kind::Word | Kind::Number)
                    || x.is_op(sql, "-")
                    || x.is_op(sql, "+")
            });
            no_query_words(sql, after)?;
            plain
                .then_some(())
                .ok_or_else(|| "a sequence's options are words and numbers".into())
        }
        "TYPE" => create_type(sql, rest),
        "TABLE" => {
            let (_, after) = name(sql, rest).ok_or("a table without a name")?;
            match after.first() {
                Some(open) if open.is_op(sql, "(") && closing(sql, after) == Some(after.len() - 1) => {
                    no_query_words(sql, after)
                }
                _ => Err("EXPORT writes CREATE TABLE <name> (<columns>) and nothing after; this is not it (CREATE TABLE … AS runs a query)".into()),
            }
        }
        "UNIQUE" if rest.first().is_some_and(|x| x.is_word(sql, "INDEX")) => {
            create_index(sql, &rest[1..])
        }
        "INDEX" => create_index(sql, rest),
        "VIEW" => {
            // Created, never run by a restore: what it selects is bound against the fenced connection.
            let (parts, mut after) = name(sql, rest).ok_or("a view without a name")?;
            let named = unquote_name(rest[2 * (parts - 1)].text(sql));
            let in_main =
                parts == 1 || unquote_name(rest[0].text(sql)).eq_ignore_ascii_case("main");
            if let Some(table) = RESTORE_READS
                .iter()
                .find(|t| in_main && named.eq_ignore_ascii_case(t))
            {
                return Err(format!(
                    "HitKeep's {table} is a table, which the restore reads; as a view it would run"
                ));
            }
            if after.first().is_some_and(|x| x.is_op(sql, "(")) {
                let end = closing(sql, after).ok_or("unbalanced parentheses")?;
                after = &after[end + 1..];
            }
            match after.first() {
                Some(x) if x.is_word(sql, "AS") => Ok(()),
                _ => Err("EXPORT writes CREATE VIEW <name> AS <query>".into()),
            }
        }
        "MACRO" => match name(sql, rest) {
            Some((_, after)) if after.first().is_some_and(|x| x.is_op(sql, "(")) => Ok(()),
            _ => Err("EXPORT writes CREATE MACRO <name>(<parameters>) AS …".into()),
        },
        "OR" | "TEMP" | "TEMPORARY" | "PERSISTENT" => {
            let what = if kind_word == "OR" {
                "OR REPLACE"
            } else {
                &kind_word
            };
            Err(format!("EXPORT never writes CREATE {what}; {SCHEMA_KINDS}"))
        }
        _ => Err(format!("CREATE {kind_word}: {SCHEMA_KINDS}")),
    }
}

/// `CREATE TYPE <name> AS ENUM ('a', 'b')`, or `AS <type>` (a type, never a query).
fn create_type(sql: &str, rest: &[Token]) -> Result<(), String> {
    let (_, after) = name(sql, rest).ok_or("a type without a name")?;
    if !after.first().is_some_and(|x| x.is_word(sql, "AS")) || after.len() < 2 {
        return Err("EXPORT writes CREATE TYPE <name> AS <type>".into());
    }
    let body = &after[1..];
    if body[0].is_word(sql, "ENUM") {
        let list = &body[1..];
        let labels_only = list.len() >= 2
            && list[0].is_op(sql, "(")
            && list[list.len() - 1].is_op(sql, ")")
            && list[1..list.len() - 1].iter().enumerate().all(|(k, x)| {
                if k % 2 == 0 {
                    x.kind == Kind::Str
                } else {
                    x.is_op(sql, ",")
                }
            });
        return labels_only.then_some(()).ok_or_else(|| {
            "an ENUM is a list of strings (AS ENUM (SELECT …) runs a query)".into()
        });
    }
    no_query_words(sql, body)
}

/// `CREATE [UNIQUE] INDEX <name> ON <table> (<expressions>)`, the rest after INDEX.
fn create_index(sql: &str, rest: &[Token]) -> Result<(), String> {
    let shape = "EXPORT writes CREATE INDEX <name> ON <table> (<columns>)";
    let (_, after) = name(sql, rest).ok_or(shape)?;
    if !after.first().is_some_and(|x| x.is_word(sql, "ON")) {
        return Err(shape.into());
    }
    let (_, cols) = name(sql, &after[1..]).ok_or(shape)?;
    match cols.first() {
        Some(open) if open.is_op(sql, "(") && closing(sql, cols) == Some(cols.len() - 1) => {
            no_query_words(sql, cols)
        }
        _ => Err(shape.into()),
    }
}

fn no_query_words(sql: &str, tokens: &[Token]) -> Result<(), String> {
    match tokens
        .iter()
        .find(|x| QUERY_WORDS.iter().any(|w| x.is_word(sql, w)))
    {
        Some(x) => Err(format!(
            "{} here would run a query while the schema is created",
            x.text(sql).to_ascii_uppercase()
        )),
        None => Ok(()),
    }
}

/// A name of one or more parts (`a`, `"s"."t"`): how many, and the tokens after it.
fn name<'t>(sql: &str, t: &'t [Token]) -> Option<(usize, &'t [Token])> {
    let part = |x: &Token| matches!(x.kind, Kind::Word | Kind::Quoted);
    if !t.first().is_some_and(part) {
        return None;
    }
    let mut parts = 1;
    let mut i = 1;
    while i + 1 < t.len() && t[i].kind == Kind::Number && t[i].text(sql) == "." && part(&t[i + 1]) {
        parts += 1;
        i += 2;
    }
    // The catalog is implied by the database imported into; EXPORT writes at most `schema.name`.
    (parts <= 2).then_some((parts, &t[i..]))
}

/// The index of the `)` that closes the `(` at `t[0]`.
fn closing(sql: &str, t: &[Token]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, x) in t.iter().enumerate() {
        if x.is_op(sql, "(") {
            depth += 1;
        } else if x.is_op(sql, ")") {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Files of a snapshot that are not table data.
const NOT_DATA: [&str; 4] = [
    "schema.sql",
    "load.sql",
    "manifest.json",
    "in-progress.json",
];

/// One statement of load.sql: `COPY <table> FROM '<file>' (<name> <literal>, …)`, the file one of the
/// snapshot's own. DuckDB re-serialises these before running them, writing option names as they are,
/// so names must be plain words and values plain literals.
fn load_statement(sql: &str, t: &[Token], dir: &Path) -> Result<(), String> {
    let shape = "load.sql holds only COPY <table> FROM '<file>' (<options>)";
    if t.is_empty() {
        return Ok(());
    }
    if !t[0].is_word(sql, "COPY") {
        return Err(shape.into());
    }
    let (_, after) = name(sql, &t[1..]).ok_or(shape)?;
    let [from, file, options @ ..] = after else {
        return Err(shape.into());
    };
    if !from.is_word(sql, "FROM") || file.kind != Kind::Str {
        return Err(format!(
            "{shape}: a COPY that writes or reads a query is not one"
        ));
    }
    copy_file(&unquote(file.text(sql)), dir)?;
    if options.is_empty() {
        return Ok(());
    }
    if !(options[0].is_op(sql, "(") && closing(sql, options) == Some(options.len() - 1)) {
        return Err(shape.into());
    }
    for option in split_list(sql, &options[1..options.len() - 1]) {
        copy_option(sql, option)?;
    }
    Ok(())
}

/// Checks the file a COPY reads as IMPORT will read it: `<import dir>/<last path component>`.
fn copy_file(path: &str, dir: &Path) -> Result<(), String> {
    let last = last_component(path);
    let reads = |what: &str| format!("it reads `{last}` from the snapshot folder, {what}");
    if last.is_empty() || last == "." || last == ".." {
        return Err(format!("`{path}` names no file of the snapshot"));
    }
    if last.contains(['*', '?', '[', ']', '{', '}']) {
        return Err(reads("a pattern, not a file"));
    }
    if NOT_DATA.contains(&last) {
        return Err(reads("which is not table data"));
    }
    match std::fs::symlink_metadata(dir.join(last)) {
        Ok(meta) if meta.is_file() => Ok(()),
        _ => Err(reads("which the snapshot does not have")),
    }
}

/// The file name IMPORT reads a COPY's file under, in the snapshot's folder.
fn last_component(path: &str) -> &str {
    path.split('/').rfind(|p| !p.is_empty()).unwrap_or_default()
}

/// `name`, `name <literal>` or `name (<literal>, …)`.
fn copy_option(sql: &str, t: &[Token]) -> Result<(), String> {
    let plain_name = |x: &Token| {
        let text = x.text(sql);
        x.kind == Kind::Word
            && text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let literal = |v: &[Token]| match v {
        [x] => matches!(x.kind, Kind::Str | Kind::Number) || plain_name(x),
        [sign, x] => (sign.is_op(sql, "-") || sign.is_op(sql, "+")) && x.kind == Kind::Number,
        _ => false,
    };
    let ok = match t {
        [] => false,
        [option] => plain_name(option),
        [option, value @ ..] if plain_name(option) => {
            literal(value)
                || (value.len() >= 2
                    && value[0].is_op(sql, "(")
                    && value[value.len() - 1].is_op(sql, ")")
                    && split_list(sql, &value[1..value.len() - 1])
                        .into_iter()
                        .all(literal))
        }
        _ => false,
    };
    ok.then_some(())
        .ok_or_else(|| "a COPY option is a plain name and literal values".into())
}

/// The items of a comma-separated list, split at its own commas (not at those inside parentheses).
fn split_list<'t>(sql: &str, t: &'t [Token]) -> Vec<&'t [Token]> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, x) in t.iter().enumerate() {
        if x.is_op(sql, "(") {
            depth += 1;
        } else if x.is_op(sql, ")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && x.is_op(sql, ",") {
            items.push(&t[start..i]);
            start = i + 1;
        }
    }
    items.push(&t[start..]);
    items
}

/// A name part as DuckDB compares it: `"a""b"` is `a"b`.
fn unquote_name(token: &str) -> String {
    match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => token.to_owned(),
    }
}

/// The value of a `'…'` token.
fn unquote(token: &str) -> String {
    token[1..token.len() - 1].replace("''", "'")
}

// ---------------------------------------------------------------------------------------------------
// Messages.

fn refusal(file: &'static str, sql: &str, statement: &[Token], why: impl Into<String>) -> Refusal {
    let text = match (statement.first(), statement.last()) {
        (Some(a), Some(z)) => &sql[a.start..z.end],
        _ => "",
    };
    Refusal {
        file,
        statement: shorten(text),
        why: why.into(),
    }
}

/// A refusal found while tokenizing at byte `at`: quotes from the start of that statement.
fn refusal_at(file: &'static str, sql: &str, at: usize, why: impl Into<String>) -> Refusal {
    let start = sql[..at].rfind(';').map_or(0, |p| p + 1);
    let end = sql[at..].find(';').map_or(sql.len(), |p| at + p);
    Refusal {
        file,
        statement: shorten(&sql[start..end]),
        why: why.into(),
    }
}

/// One line, at most [`QUOTED_CHARS`] characters.
fn shorten(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= QUOTED_CHARS {
        return line;
    }
    let mut short: String = line.chars().take(QUOTED_CHARS).collect();
    short.push('…');
    short
}

const QUOTED_CHARS: usize = 160;

#[cfg(test)]
mod tests {
    use super::*;

    /// What DuckDB 2.0.0 writes for a database with a schema, an enum type, a sequence, keys, a check,
    /// a generated column, awkward names and strings (`;`, quotes, newlines), views, macros and indexes.
    const EXPORT_2_0: &str = "CREATE SCHEMA s2;
CREATE SEQUENCE seq1 INCREMENT BY 2 MINVALUE 1 MAXVALUE 9223372036854775807 START 5 NO CYCLE;
CREATE TYPE mood AS ENUM ( 'happy', 'it''s; ok', 'back\\slash', 'new
line' );
CREATE TABLE t1(id INTEGER DEFAULT(nextval('seq1')) PRIMARY KEY, \"name\" VARCHAR DEFAULT('a;b''c'), m ENUM('happy', 'it''s; ok', 'back\\slash', 'new
line'), g INTEGER GENERATED ALWAYS AS((id * 2)), \"Weird \"\"Col\"\"; x\" VARCHAR, CHECK((length(\"name\") < 100)));
CREATE TABLE s2.\"T;2\"(a INTEGER, b BLOB DEFAULT(CAST('\\xAA' AS BLOB)), UNIQUE(a));
CREATE TABLE t3(x VARCHAR, y INTEGER, FOREIGN KEY (y) REFERENCES t1(id));
CREATE MACRO add1 (a) AS ((a + 1));
CREATE MACRO tm (n) AS TABLE (SELECT * FROM \"range\"(n));
CREATE MACRO m2 (a, b := 'x;y') AS (concat(a, b));
CREATE VIEW v1 AS SELECT id, \"name\" FROM t1 WHERE (\"name\" != 'x;y');
CREATE VIEW s2.v2 AS SELECT * FROM v1;
CREATE INDEX idx1 ON t1(\"name\");
CREATE UNIQUE INDEX idx2 ON t3(y);


";

    /// The same from DuckDB 1.5.6 (HitKeep Go's): every statement ends in `;;`.
    const EXPORT_1_5: &str = "CREATE SCHEMA s2;;
CREATE SEQUENCE seq1 INCREMENT BY 2 MINVALUE 1 MAXVALUE 9223372036854775807 START 5 NO CYCLE;;
CREATE TABLE s2.\"T;2\"(a INTEGER, b BLOB DEFAULT(CAST('\\xAA' AS \"BLOB\")), UNIQUE(a));;
CREATE MACRO tm (n) AS TABLE (SELECT * FROM \"range\"(n));;
CREATE VIEW s2.v2 AS SELECT * FROM v1;;
CREATE UNIQUE INDEX idx2 ON t3(y);;


";

    fn schema(sql: &str) -> Result<(), Refusal> {
        check_schema(sql.as_bytes())
    }

    fn refused(sql: &str) -> Refusal {
        schema(sql).expect_err(sql)
    }

    fn words(sql: &str) -> Vec<(Kind, &str)> {
        lex(sql)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    #[test]
    fn what_export_writes_is_accepted() {
        schema(EXPORT_2_0).unwrap();
        schema(EXPORT_1_5).unwrap();
        schema("").unwrap();
        schema("\n\n").unwrap();
        schema("create table t(a integer);\ncreate index i on t(a);").unwrap();
    }

    #[test]
    fn semicolons_inside_strings_names_and_comments_do_not_split() {
        let sql = "CREATE TABLE \"a;b\"(c VARCHAR DEFAULT('x;''y'), \"d\"\";\" INTEGER) /* ; /* nested ; */ still; */ -- ;\n;";
        assert_eq!(statement_tokens(&lex(sql).unwrap()).len(), 1);
        schema(sql).unwrap();
        // The statement after the comment's end is one, and refused.
        let r = refused("CREATE TABLE t(a INT); /* x */ COPY (SELECT 42) TO '/tmp/x';");
        assert_eq!(r.statement, "COPY (SELECT 42) TO '/tmp/x'");
        assert_eq!(r.file, "schema.sql");
        // A nested comment is closed only by its last `*/`.
        let r = refused("/* a /* b */ ; */ ATTACH 'x' AS y;");
        assert!(r.statement.contains("ATTACH"), "{r:?}");
    }

    #[test]
    fn statements_export_never_writes_are_refused() {
        for sql in [
            "COPY (SELECT 42) TO '/tmp/pwned';",
            "ATTACH '/tmp/other.db' AS other;",
            "INSTALL httpfs;",
            "LOAD httpfs;",
            "PRAGMA enable_profiling;",
            "SET enable_external_access = true;",
            "CALL checkpoint();",
            "SELECT 1;",
            "INSERT INTO t VALUES (1);",
            "CREATE OR REPLACE TABLE t(a INTEGER);",
            "create or replace macro m(a) as a;",
            "CREATE TEMP TABLE t(a INTEGER);",
            "CREATE TABLE IF NOT EXISTS t(a INTEGER);",
            "CREATE TABLE t AS SELECT * FROM read_csv('/etc/passwd');",
            "CREATE TABLE t(a) AS SELECT 1;",
            "CREATE TABLE t(a INTEGER) WITH (x = 1);",
            "CREATE TYPE e AS ENUM (SELECT 'a');",
            "CREATE TYPE f AS INTEGER[(SELECT 1)];",
            "CREATE SECRET s (TYPE s3);",
            "CREATE PERSISTENT SECRET s (TYPE s3);",
            "CREATE TRIGGER t AFTER INSERT ON a FOR EACH ROW INSERT INTO b VALUES (1);",
            "CREATE FUNCTION f(a) AS a;",
            "CREATE INDEX i ON t((SELECT 1));",
            "CREATE SCHEMA a.b;",
            "CREATE TABLE db.s.t(a INTEGER);",
            "EXPORT DATABASE '/tmp/x';",
            "IMPORT DATABASE '/tmp/x';",
            "DETACH memory;",
            "USE other;",
        ] {
            let r = refused(&format!(
                "CREATE SCHEMA fine;\n{sql}\nCREATE SCHEMA never_reached;"
            ));
            assert_eq!(r.statement, sql.trim_end_matches(';'), "{r:?}");
            assert_eq!(r.file, "schema.sql");
        }
    }

    #[test]
    fn a_view_in_place_of_a_table_the_restore_reads_is_refused() {
        for sql in [
            "CREATE VIEW tenants AS SELECT * FROM read_text('/etc/passwd');",
            "create view main.\"Tenants\" as select 1 as id;",
            "CREATE VIEW data_migrations AS SELECT 'default_tenant_split_v1' AS name;",
        ] {
            assert!(refused(sql).why.contains("is a table"), "{sql}");
        }
        schema("CREATE VIEW other.tenants AS SELECT 1; CREATE VIEW tenants_by_day AS SELECT 1;")
            .unwrap();
    }

    #[test]
    fn lowercase_and_mixed_case_keywords_are_the_same_words() {
        schema("create schema x; Create Sequence s start 1; create unique index i on t(a);")
            .unwrap();
        assert!(
            refused("copy (select 42) to '/tmp/x';")
                .why
                .contains("COPY")
        );
        assert!(
            refused("Create Or Replace View v AS SELECT 1;")
                .why
                .contains("OR")
        );
    }

    #[test]
    fn what_duckdb_reads_differently_is_refused() {
        for (sql, why) in [
            ("CREATE TABLE t(a VARCHAR DEFAULT(E'\\''));", "E'"),
            // `1e` before a quote is the number 1, then an E-string (DuckDB's tokenizer gives `e` back).
            (
                "CREATE TABLE t(a VARCHAR DEFAULT(1e'\\'; COPY (SELECT 1) TO ''x''; --'));",
                "E'",
            ),
            ("CREATE TABLE t(a VARCHAR DEFAULT($$;$$));", "$"),
            ("CREATE TABLE t(a$b INTEGER);", "$"),
            ("CREATE TABLE `t`(a INTEGER);", "backticks"),
            ("CREATE TABLE t(a VARCHAR DEFAULT(X'00'));", "X'"),
            ("CREATE TABLE t(a\u{a0}INTEGER);", "U+00A0"),
            ("\u{feff}CREATE TABLE t(a INTEGER);", "U+FEFF"),
            ("CREATE TABLE t(a VARCHAR DEFAULT('x\0'));", "U+0000"),
            ("CREATE TABLE t(a VARCHAR DEFAULT('x));", "never closed"),
            ("CREATE TABLE \"t(a INTEGER);", "never closed"),
            ("CREATE TABLE t(a INTEGER); /* open", "comment"),
            ("CREATE TABLE t(a INTEGER); -- no newline", "comment"),
            ("CREATE TABLE t(a INTEGER)", "must end with `;`"),
        ] {
            let r = refused(sql);
            assert!(r.why.contains(why), "{sql}: {r:?}");
        }
        assert!(check_schema(b"CREATE TABLE t(a INTEGER DEFAULT('\xff'));").is_err());
    }

    #[test]
    fn the_tokenizer_ends_words_numbers_and_operators_where_duckdb_does() {
        use Kind::*;
        assert_eq!(
            words("s2.\"T;2\" 1.5e-3x abc'd' a::int x:=-1 +--c\n"),
            [
                (Word, "s2"),
                (Number, "."),
                (Quoted, "\"T;2\""),
                (Number, "1.5e-3"),
                (Word, "x"),
                (Word, "abc"),
                (Str, "'d'"),
                (Word, "a"),
                (Op, "::"),
                (Word, "int"),
                (Word, "x"),
                (Op, ":="),
                (Op, "-"),
                (Number, "1"),
                (Op, "+"),
            ]
        );
    }

    #[test]
    fn a_long_statement_is_quoted_short_on_one_line() {
        let sql = format!("COPY (SELECT '{}')\n TO '/tmp/x';", "y".repeat(400));
        let r = refused(&sql);
        assert_eq!(r.statement.chars().count(), QUOTED_CHARS + 1);
        assert!(r.statement.starts_with("COPY (SELECT 'yyy") && r.statement.ends_with('…'));
        assert!(!r.statement.contains('\n'));
    }

    fn load_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["hits.parquet", "s__t__.parquet", "schema.sql", "load.sql"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        dir
    }

    #[test]
    fn load_sql_as_export_writes_it_is_accepted() {
        let dir = load_dir();
        for sql in [
            "COPY hits FROM '/var/lib/hitkeep/.hitkeep-staging/x/hits.parquet' (FORMAT 'parquet', COMPRESSION 'ZSTD');\n",
            "COPY s2.\"T;2\" FROM '/tmp/h16/exp20/s__t__.parquet' (FORMAT 'PARQUET', compression 'ZSTD');",
            "copy hits from 'C:/backups/hits.parquet' (format 'csv', force_not_null (a, b), allow_quoted_nulls false, header, skip -1);",
            "COPY hits FROM 'hits.parquet';;",
            "",
        ] {
            check_load(sql.as_bytes(), dir.path()).expect(sql);
        }
    }

    #[test]
    fn load_sql_that_reads_elsewhere_or_runs_code_is_refused() {
        let dir = load_dir();
        for (sql, why) in [
            ("COPY hits FROM '/etc/passwd';", "does not have"),
            ("COPY hits FROM '/x/..';", "names no file"),
            ("COPY hits FROM '/x/sub';", "does not have"),
            ("COPY hits FROM '/x/*.parquet';", "pattern"),
            ("COPY hits FROM '/x/schema.sql';", "not table data"),
            ("COPY hits FROM '';", "names no file"),
            ("COPY hits TO '/tmp/x.parquet';", "writes or reads a query"),
            ("COPY (SELECT 42) TO '/tmp/x';", "only COPY"),
            (
                "COPY hits FROM ('/x/' || 'hits.parquet');",
                "writes or reads a query",
            ),
            // Option names are written back unquoted: a quoted one would become code.
            (
                "COPY hits FROM 'hits.parquet' (\"x); COPY (SELECT 1) TO '/tmp/y' (y\" 1);",
                "plain name",
            ),
            (
                "COPY hits FROM 'hits.parquet' (FORMAT (SELECT 'parquet'));",
                "plain name",
            ),
            (
                "COPY hits FROM 'hits.parquet' (FORMAT lower('PARQUET'));",
                "plain name",
            ),
            (
                "COPY hits FROM 'hits.parquet' WITH (FORMAT 'parquet');",
                "only COPY",
            ),
            ("COPY memory.main.hits FROM 'hits.parquet';", "only COPY"),
            ("ATTACH '/tmp/o.db';", "only COPY"),
        ] {
            let r = check_load(sql.as_bytes(), dir.path()).expect_err(sql);
            assert!(r.why.contains(why), "{sql}: {r:?}");
            assert_eq!(r.file, "load.sql");
        }
    }
}
