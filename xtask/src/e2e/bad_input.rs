//! The mistakes real people make: each gives exit 2 (usage and config) or 1 (runtime), a message
//! naming the setting and the fix, and leaves no file or object behind.

use std::path::Path;

use anyhow::Result;

use super::Ctx;
use super::hitkeep::Env;

/// One bad input: what it is, the command line, environment changes, the exit status expected and
/// what the message must contain (each needle, case-insensitively).
struct Case {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    needles: Vec<&'static str>,
}

fn case(
    what: &'static str,
    args: &[&str],
    env: &[(&'static str, &str)],
    code: i32,
    needles: &[&'static str],
) -> Case {
    Case {
        what,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        code,
        needles: needles.to_vec(),
    }
}

const RUN: &[&str] = &["backup", "run"];
const CHECK: &[&str] = &["config", "check"];
const ARCHIVE: &[&str] = &["archive", "run"];

/// Env values and flags that fail before anything touches storage.
fn config_cases() -> Vec<Case> {
    let e = |what, var: &'static str, value: &str, needles: &[&'static str]| {
        case(what, RUN, &[(var, value)], 2, needles)
    };
    vec![
        e(
            "interval not a number",
            "HITKEEP_BACKUP_INTERVAL",
            "abc",
            &["HITKEEP_BACKUP_INTERVAL", "minutes"],
        ),
        e(
            "negative interval",
            "HITKEEP_BACKUP_INTERVAL",
            "-5",
            &["HITKEEP_BACKUP_INTERVAL"],
        ),
        e(
            "fractional interval",
            "HITKEEP_BACKUP_INTERVAL",
            "1.5",
            &["HITKEEP_BACKUP_INTERVAL"],
        ),
        e(
            "interval with a unit",
            "HITKEEP_BACKUP_INTERVAL",
            "60m",
            &["HITKEEP_BACKUP_INTERVAL"],
        ),
        e(
            "retention not a number",
            "HITKEEP_BACKUP_RETENTION",
            "many",
            &["HITKEEP_BACKUP_RETENTION"],
        ),
        e(
            "negative retention",
            "HITKEEP_BACKUP_RETENTION",
            "-1",
            &["HITKEEP_BACKUP_RETENTION"],
        ),
        e(
            "data retention not a number",
            "HITKEEP_DATA_RETENTION_DAYS",
            "forever",
            &["HITKEEP_DATA_RETENTION_DAYS"],
        ),
        e(
            "negative data retention",
            "HITKEEP_DATA_RETENTION_DAYS",
            "-3",
            &["HITKEEP_DATA_RETENTION_DAYS"],
        ),
        e(
            "use_ssl not a boolean",
            "HITKEEP_S3_USE_SSL",
            "maybe",
            &["HITKEEP_S3_USE_SSL", "false"],
        ),
        // Blank is "not set": the default (HTTPS) then fails against this plain-HTTP server.
        case(
            "use_ssl blank",
            RUN,
            &[("HITKEEP_S3_USE_SSL", " ")],
            1,
            &["HITKEEP_S3_USE_SSL=false"],
        ),
        e(
            "url style unknown",
            "HITKEEP_S3_URL_STYLE",
            "sideways",
            &["HITKEEP_S3_URL_STYLE", "path"],
        ),
        e(
            "region with spaces",
            "HITKEEP_S3_REGION",
            "eu central 1",
            &["HITKEEP_S3_REGION"],
        ),
        e(
            "endpoint http//x",
            "HITKEEP_S3_ENDPOINT",
            "http//x",
            &["HITKEEP_S3_ENDPOINT"],
        ),
        e(
            "endpoint :9000",
            "HITKEEP_S3_ENDPOINT",
            ":9000",
            &["HITKEEP_S3_ENDPOINT"],
        ),
        e(
            "endpoint with a path",
            "HITKEEP_S3_ENDPOINT",
            "http://localhost:9000/some/path",
            &["HITKEEP_S3_ENDPOINT", "path"],
        ),
        e(
            "endpoint ftp://",
            "HITKEEP_S3_ENDPOINT",
            "ftp://localhost:9000",
            &["HITKEEP_S3_ENDPOINT"],
        ),
        e(
            "endpoint port not a number",
            "HITKEEP_S3_ENDPOINT",
            "localhost:notaport",
            &["HITKEEP_S3_ENDPOINT"],
        ),
        e(
            "endpoint with a space",
            "HITKEEP_S3_ENDPOINT",
            "local host:9000",
            &["HITKEEP_S3_ENDPOINT"],
        ),
        e(
            "backup path s3:// alone",
            "HITKEEP_BACKUP_PATH",
            "s3://",
            &["HITKEEP_BACKUP_PATH", "bucket"],
        ),
        e(
            "backup path s3:///prefix",
            "HITKEEP_BACKUP_PATH",
            "s3:///backups",
            &["HITKEEP_BACKUP_PATH", "bucket"],
        ),
        e(
            "bucket with capitals and _",
            "HITKEEP_BACKUP_PATH",
            "s3://Bad_Bucket/x",
            &["HITKEEP_BACKUP_PATH", "Bad_Bucket"],
        ),
        e(
            "bucket too short",
            "HITKEEP_BACKUP_PATH",
            "s3://ab/x",
            &["HITKEEP_BACKUP_PATH", "ab"],
        ),
        e(
            "bucket with ..",
            "HITKEEP_BACKUP_PATH",
            "s3://bucket..name/x",
            &["HITKEEP_BACKUP_PATH"],
        ),
        e(
            "bucket starting with -",
            "HITKEEP_BACKUP_PATH",
            "s3://-bucket/x",
            &["HITKEEP_BACKUP_PATH"],
        ),
        e(
            "bucket like an IP address",
            "HITKEEP_BACKUP_PATH",
            "s3://192.168.1.1/x",
            &["HITKEEP_BACKUP_PATH"],
        ),
        e(
            "gs:// path",
            "HITKEEP_BACKUP_PATH",
            "gs://bucket/x",
            &["HITKEEP_BACKUP_PATH", "s3://"],
        ),
        e(
            "s3:/ with one slash",
            "HITKEEP_BACKUP_PATH",
            "s3:/hitkeep/backups",
            &["HITKEEP_BACKUP_PATH", "s3://"],
        ),
        e(
            "prefix with ..",
            "HITKEEP_BACKUP_PATH",
            "s3://hitkeep/../x",
            &["HITKEEP_BACKUP_PATH", ".."],
        ),
        case(
            "archive bucket invalid",
            ARCHIVE,
            &[("HITKEEP_ARCHIVE_PATH", "s3://Bad_Bucket/x")],
            2,
            &["HITKEEP_ARCHIVE_PATH"],
        ),
        case(
            "archive path s3:// alone",
            ARCHIVE,
            &[("HITKEEP_ARCHIVE_PATH", "s3://")],
            2,
            &["HITKEEP_ARCHIVE_PATH"],
        ),
        e(
            "log level unknown",
            "HITKEEP_LOG_LEVEL",
            "loud",
            &["HITKEEP_LOG_LEVEL", "debug"],
        ),
        e(
            "log format unknown",
            "HITKEEP_LOG_FORMAT",
            "xml",
            &["HITKEEP_LOG_FORMAT", "json"],
        ),
        case(
            "http addr not an address",
            &["serve"],
            &[("HITKEEP_HTTP_ADDR", "notanaddr")],
            2,
            &["HITKEEP_HTTP_ADDR"],
        ),
        case(
            "http addr port out of range",
            &["serve"],
            &[("HITKEEP_HTTP_ADDR", "127.0.0.1:99999")],
            2,
            &["HITKEEP_HTTP_ADDR"],
        ),
        e(
            "prune_s3 not a boolean",
            "HITKEEP_BACKUP_PRUNE_S3",
            "perhaps",
            &["HITKEEP_BACKUP_PRUNE_S3"],
        ),
        case(
            "access key without secret",
            RUN,
            &[("HITKEEP_S3_SECRET_ACCESS_KEY", "")],
            2,
            &["HITKEEP_S3_SECRET_ACCESS_KEY"],
        ),
        case(
            "secret without access key",
            RUN,
            &[("HITKEEP_S3_ACCESS_KEY_ID", "")],
            2,
            &["HITKEEP_S3_ACCESS_KEY_ID"],
        ),
        case(
            "backups not configured",
            RUN,
            &[("HITKEEP_BACKUP_PATH", "")],
            2,
            &["HITKEEP_BACKUP_PATH"],
        ),
        case(
            "config file missing (env)",
            CHECK,
            &[("HITKEEP_CONFIG", "/nonexistent/hitkeep.toml")],
            2,
            &["/nonexistent/hitkeep.toml"],
        ),
        case(
            "interval flag not a number",
            &["backup", "run", "--backup-interval", "abc"],
            &[],
            2,
            &["backup-interval"],
        ),
        case(
            "use-ssl flag not a boolean",
            &["backup", "run", "--s3-use-ssl=maybe"],
            &[],
            2,
            &["s3-use-ssl"],
        ),
        case(
            "unknown flag",
            &["backup", "run", "--frobnicate"],
            &[],
            2,
            &["--frobnicate"],
        ),
        case("unknown subcommand", &["backup", "sing"], &[], 2, &["sing"]),
        case(
            "list --json with a value",
            &["backup", "list", "--json=maybe"],
            &[],
            2,
            &["--json"],
        ),
        case(
            "verify snapshot ../x",
            &["backup", "verify", "--snapshot", "../x"],
            &[],
            2,
            &["snapshot", "YYYY-MM-DDTHHMMSSZ"],
        ),
        case(
            "verify snapshot impossible date",
            &["backup", "verify", "--snapshot", "2026-13-45T999999Z"],
            &[],
            2,
            &["snapshot"],
        ),
        case(
            "verify snapshot empty",
            &["backup", "verify", "--snapshot", ""],
            &[],
            2,
            &["snapshot"],
        ),
        case(
            "completions for an unknown shell",
            &["completions", "tcsh"],
            &[],
            2,
            &["tcsh"],
        ),
        case(
            "archive query without SQL",
            &["archive", "query"],
            &[],
            2,
            &["SQL"],
        ),
        case(
            "archive restore without --site",
            &["archive", "restore"],
            &[],
            2,
            &["--site"],
        ),
        case(
            "archive restore site not a uuid",
            &["archive", "restore", "--site", "my-site"],
            &[],
            2,
            &["site"],
        ),
        case(
            "archive restore bad --from date",
            &[
                "archive",
                "restore",
                "--site",
                "6b9d56c1-2adb-48cf-a57c-3c6fce83ca62",
                "--from",
                "2026-99-99",
            ],
            &[],
            2,
            &["--from"],
        ),
        case(
            "demo with 0 hits",
            &["demo", "--hits", "zero"],
            &[],
            2,
            &["--hits"],
        ),
    ]
}

/// `recover restore-backup` mistakes.
fn restore_cases(file: &Path, from: &str, empty: &str) -> Vec<Case> {
    let file = &*file.to_string_lossy();
    let r = |what, extra: &[&str], code, needles: &[&'static str]| {
        let args: Vec<&str> = ["recover", "restore-backup"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        case(what, &args, &[], code, needles)
    };
    vec![
        r(
            "restore snapshot ../x",
            &["-from", from, "-snapshot", "../x", "-yes"],
            2,
            &["snapshot", "YYYY-MM-DDTHHMMSSZ"],
        ),
        r(
            "restore impossible snapshot date",
            &["-from", from, "-snapshot", "2026-13-45T999999Z", "-yes"],
            2,
            &["snapshot"],
        ),
        r(
            "restore empty snapshot",
            &["-from", from, "-snapshot", "", "-yes"],
            2,
            &["snapshot"],
        ),
        r("restore without -from", &["-yes"], 2, &["from"]),
        r("restore empty -from", &["-from", "", "-yes"], 2, &["from"]),
        r(
            "restore -from a missing directory",
            &["-from", "/nonexistent/backups", "-yes"],
            1,
            &["/nonexistent/backups"],
        ),
        r(
            "restore -from a file",
            &["-from", file, "-yes"],
            1,
            &["not a directory"],
        ),
        r(
            "restore -from s3://",
            &["-from", "s3://", "-yes"],
            2,
            &["from", "bucket"],
        ),
        r(
            "restore -from a bad bucket name",
            &["-from", "s3://Bad_Bucket/x", "-yes"],
            2,
            &["Bad_Bucket"],
        ),
        r(
            "restore -from http://",
            &["-from", "http://example.com/x", "-yes"],
            2,
            &["from", "s3://"],
        ),
        r(
            "restore -tenant not a uuid",
            &["-from", from, "-tenant", "team-a", "-yes"],
            2,
            &["tenant", "team-a"],
        ),
        r(
            "restore -tenant with -shared-only",
            &[
                "-from",
                from,
                "-tenant",
                "5c6644da-ef00-45e6-825d-c755d19d7f9f",
                "-shared-only",
                "-yes",
            ],
            2,
            &["shared-only"],
        ),
        r(
            "restore without -yes and no terminal",
            &["-from", from],
            2,
            &["-yes"],
        ),
        r(
            "restore from an empty backup location",
            &["-from", empty, "-yes"],
            1,
            &["no", "snapshot"],
        ),
    ]
}

/// TOML config files.
fn toml_cases(dir: &Path, secret: &str) -> Result<Vec<Case>> {
    let write = |name: &str, text: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_string_lossy().into_owned())
    };
    let syntax = write("syntax.toml", "backup_interval = \n")?;
    let unknown = write("unknown.toml", "backup_intervl = 5\n")?;
    let wrong_type = write("type.toml", "backup_interval = \"soon\"\n")?;
    let leaky = write("leaky.toml", &format!("s3_secret_access_key = {secret}x\n"))?;
    let env_style = write("envstyle.toml", "HITKEEP_BACKUP_INTERVAL = 5\n")?;
    let dir_path = &*dir.to_string_lossy();
    let c = |what, file: &str, needles: &[&'static str]| {
        case(
            what,
            &["config", "check", "--config", file],
            &[],
            2,
            needles,
        )
    };
    Ok(vec![
        c("TOML syntax error", &syntax, &["syntax.toml", "line"]),
        c(
            "TOML unknown key",
            &unknown,
            &["backup_intervl", "backup_interval"],
        ),
        c("TOML wrong type", &wrong_type, &["backup_interval"]),
        c("TOML secret on a bad line", &leaky, &["leaky.toml"]),
        c(
            "TOML with env-style keys",
            &env_style,
            &["HITKEEP_BACKUP_INTERVAL", "backup_interval"],
        ),
        c(
            "TOML file missing",
            "/nonexistent/hitkeep.toml",
            &["/nonexistent/hitkeep.toml"],
        ),
        c(
            "TOML path is a directory",
            dir_path,
            &["not a regular file"],
        ),
    ])
}

/// Failures only the server can reveal.
fn runtime_cases(ctx: &Ctx, file: &Path, ws: &str) -> Vec<Case> {
    let file = &*file.to_string_lossy();
    let https = ctx.s3.endpoint.as_str();
    let none = ctx.s3.url("bad/none");
    let missing = "s3://no-such-bucket-e2e/backups";
    vec![
        case(
            "wrong secret key",
            RUN,
            &[("HITKEEP_S3_SECRET_ACCESS_KEY", ws)],
            1,
            &["HITKEEP_S3_SECRET_ACCESS_KEY"],
        ),
        case(
            "wrong access key id",
            RUN,
            &[("HITKEEP_S3_ACCESS_KEY_ID", "GK000000000000000000000000")],
            1,
            &["HITKEEP_S3_ACCESS_KEY_ID"],
        ),
        case(
            "wrong secret, archive",
            ARCHIVE,
            &[("HITKEEP_S3_SECRET_ACCESS_KEY", ws)],
            1,
            &["HITKEEP_S3_SECRET_ACCESS_KEY"],
        ),
        case(
            "wrong secret, restore",
            &["recover", "restore-backup", "-from", &none, "-yes"],
            &[("HITKEEP_S3_SECRET_ACCESS_KEY", ws)],
            1,
            &["HITKEEP_S3_SECRET_ACCESS_KEY"],
        ),
        case(
            "nonexistent bucket",
            RUN,
            &[("HITKEEP_BACKUP_PATH", missing)],
            1,
            &["no-such-bucket-e2e"],
        ),
        case(
            "nothing listening at the endpoint",
            RUN,
            &[("HITKEEP_S3_ENDPOINT", "127.0.0.1:9")],
            1,
            &["127.0.0.1:9"],
        ),
        case(
            "https against a plain-HTTP server",
            RUN,
            &[
                ("HITKEEP_S3_USE_SSL", "true"),
                ("HITKEEP_S3_ENDPOINT", https),
            ],
            1,
            &["HITKEEP_S3_USE_SSL"],
        ),
        case(
            "backup path is a file",
            RUN,
            &[("HITKEEP_BACKUP_PATH", file)],
            2,
            &["HITKEEP_BACKUP_PATH", "directory"],
        ),
        case(
            "archive path is a file",
            ARCHIVE,
            &[("HITKEEP_ARCHIVE_PATH", file)],
            2,
            &["HITKEEP_ARCHIVE_PATH", "directory"],
        ),
        case(
            "database missing",
            RUN,
            &[("HITKEEP_DB_PATH", "/nonexistent/hitkeep.db")],
            1,
            &["/nonexistent/hitkeep.db"],
        ),
        case(
            "doctor with a wrong secret",
            &["doctor"],
            &[("HITKEEP_S3_SECRET_ACCESS_KEY", ws)],
            // A failed check, not a usage error.
            1,
            &["HITKEEP_S3_SECRET_ACCESS_KEY"],
        ),
    ]
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("bad")?;
    let base = ctx.s3_env_at("bad");
    ctx.demo(&dir, &base, 10_000, 1)?;
    // A snapshot to restore (so the -yes prompt is reached), and a run with a session token for the
    // secret scan: Garage ignores tokens, MinIO refuses unknown ones; either way it must not be printed.
    let out = ctx.hk(&dir, &base, RUN)?;
    anyhow::ensure!(out.ok(), "backup run failed: {}", out.brief());
    let file = dir.join("not-a-directory");
    std::fs::write(&file, "a file where a directory belongs\n")?;
    let tomls = ctx.dir("bad-toml")?;
    let wrong_secret = format!("wrong{}", &ctx.s3.secret_key[5..]);
    let token = format!("FwoGZXIvYXdzE2e{:016x}", fastrand::u64(..));
    ctx.secrets.extend([
        wrong_secret.clone(),
        token.clone(),
        format!("{}x", ctx.s3.secret_key),
    ]);
    ctx.hk(
        &dir,
        &base.clone().set("HITKEEP_S3_SESSION_TOKEN", &token),
        RUN,
    )?;

    let mut cases = config_cases();
    cases.extend(restore_cases(
        &file,
        &ctx.s3.url("bad/backups"),
        &ctx.s3.url("bad/empty"),
    ));
    cases.extend(toml_cases(&tomls, &ctx.s3.secret_key)?);
    cases.extend(runtime_cases(ctx, &file, &wrong_secret));
    ctx.report.figure("bad inputs", cases.len());

    let local_before = super::entries(&dir)?;
    let bucket_before = ctx.rclone.objects(&ctx.s3.bucket)?;
    for c in &cases {
        let mut env = Env::default().with(&base);
        for (k, v) in &c.env {
            // An empty value stands for "not set at all".
            env = if v.is_empty() {
                env.unset(k)
            } else {
                env.set(k, v)
            };
        }
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = ctx.hk(&dir, &env, &args)?;
        let msg = format!("{}\n{}", out.message(), out.stdout).to_lowercase();
        let missing: Vec<_> = c
            .needles
            .iter()
            .filter(|n| !msg.contains(&n.to_lowercase()))
            .collect();
        ctx.report.check(
            format!("{}: exit {}, names {:?}", c.what, c.code, c.needles),
            out.code == Some(c.code) && missing.is_empty() && !msg.contains("panicked"),
            format!(
                "exit {:?}, missing {missing:?}; said: {}",
                out.code,
                out.message().trim()
            ),
        );
    }
    let local_after = super::entries(&dir)?;
    let new: Vec<_> = local_after.difference(&local_before).collect();
    ctx.report.check(
        "no file left behind by any bad input",
        new.is_empty(),
        format!("{new:?}"),
    );
    let bucket_after = ctx.rclone.objects(&ctx.s3.bucket)?;
    let new: Vec<_> = bucket_after
        .keys()
        .filter(|k| !bucket_before.contains_key(*k))
        .collect();
    ctx.report.check(
        "no object left behind by any bad input",
        new.is_empty(),
        format!("{new:?}"),
    );
    Ok(())
}
