//! Who holds a database, asked of the kernel: real DuckDB connections in other processes, in this
//! process, and on the far side of a PID namespace (`unshare -pf --mount-proc`, as a container is).
//!
//! The other processes are this test binary again, running [`ROLE_TEST`] with [`ROLE`] set: it holds
//! a database with a real DuckDB connection until its stdin closes, or reports what it sees.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use hitkeep_data::{
    DataError, Holder, LockHolder, LockMode, OpenMode, lock_holder, open_database, open_read_only,
};

/// `hold:<path>`, `hold-read-only:<path>`, `probe:<path>` or `open:<path>`: the part a child plays.
const ROLE: &str = "HITKEEP_LOCK_TEST_ROLE";
/// The test that plays the role when [`ROLE`] is set.
const ROLE_TEST: &str = "lock::a_free_file_has_no_holder_and_children_play_their_roles";

#[test]
fn a_free_file_has_no_holder_and_children_play_their_roles() {
    if let Ok(role) = std::env::var(ROLE) {
        play(&role);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    assert_eq!(lock_holder(&db).unwrap(), None);
    assert_eq!(
        lock_holder(&dir.path().join("missing.db")).unwrap(),
        None,
        "a file that does not exist is held by nobody"
    );
}

/// A child's part: hold the database until stdin closes, or report on it and exit.
fn play(role: &str) {
    let (what, path) = role.split_once(':').expect("role:path");
    let path = Path::new(path);
    // libtest has printed "test … ... " without a newline: start the report on a line of its own.
    println!();
    match what {
        "hold" | "hold-read-only" => {
            let conn = match what {
                "hold" => open_database(path, OpenMode::Existing).unwrap(),
                _ => open_read_only(path).unwrap(),
            };
            let one: i64 = conn.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
            println!("ready {one}");
            std::io::stdout().flush().unwrap();
            let mut rest = String::new();
            let _ = std::io::stdin().read_line(&mut rest);
        }
        "probe" => {
            println!("kernel: {:?}", lock_holder(path).unwrap());
            println!("proc-locks: {}", in_proc_locks(path));
        }
        "open" => match open_database(path, OpenMode::Existing) {
            Ok(_) => println!("opened"),
            Err(e) => println!("refused: {}", e.to_string().replace('\n', " ")),
        },
        other => panic!("unknown role {other}"),
    }
}

/// A database made the way HitKeep's are, closed again.
fn database(dir: &Path) -> PathBuf {
    let path = dir.join("hitkeep.db");
    let conn = open_database(&path, OpenMode::Create).unwrap();
    conn.execute_batch("CREATE TABLE t AS SELECT 1 AS x")
        .unwrap();
    drop(conn);
    path
}

/// This test binary playing `role` on `path`, optionally behind `prefix` (`unshare …`).
fn child(prefix: &[&str], role: &str, path: &Path) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&exe);
            cmd
        }
        None => Command::new(&exe),
    };
    cmd.args([ROLE_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// A child holding `path` with a real DuckDB connection, once it says so.
struct Holding {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open to the end: libtest in the child still reports its result.
    stdout: std::io::Lines<BufReader<ChildStdout>>,
}

impl Holding {
    fn start(role: &str, path: &Path) -> Holding {
        let mut child = child(&[], role, path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("ready")));
        assert!(ready.is_some(), "the holder never said it was ready");
        Holding {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin and waits: the connection closes and the lock goes with the process.
    fn stop(mut self) {
        drop(self.stdin.take());
        let rest: Vec<String> = self.stdout.by_ref().map_while(Result::ok).collect();
        assert!(self.child.wait().unwrap().success(), "{rest:?}");
    }
}

/// What a child playing `role` printed, run to its end.
fn report(prefix: &[&str], role: &str, path: &Path) -> String {
    let out = child(prefix, role, path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{prefix:?} {role}: {stdout}");
    stdout
}

fn line<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {report}"))
}

/// Whether `/proc/locks`, as this process sees it, lists a lock on `path`'s inode: what the old check read.
fn in_proc_locks(path: &Path) -> bool {
    let inode = std::fs::metadata(path).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| {
            l.split_whitespace()
                .nth(5)
                .and_then(|f| f.rsplit(':').next()?.parse::<u64>().ok())
                == Some(inode)
        })
}

#[test]
fn a_duckdb_writer_in_another_process_is_named_with_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let holder = Holding::start("hold", &db);
    let expected = lock_holder(&db).unwrap().expect("the child holds it");
    assert_eq!(
        expected.who,
        Holder::Process {
            pid: holder.pid(),
            exe: Some(std::env::current_exe().unwrap()),
        }
    );
    assert_eq!(expected.mode, LockMode::Write);
    // A backup or an archive run opening it is refused, and told the same.
    match open_database(&db, OpenMode::Existing) {
        Err(DataError::Locked {
            holder: Some(named),
            ..
        }) => assert_eq!(named, expected),
        other => panic!("{:?}", other.map(|_| "opened")),
    }
    let err = open_database(&db, OpenMode::Existing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!(
            "is in use by another process ({} (PID {}))",
            std::env::current_exe().unwrap().display(),
            holder.pid()
        )),
        "{err}"
    );
    holder.stop();
    assert_eq!(
        lock_holder(&db).unwrap(),
        None,
        "the lock left with the process"
    );
    drop(open_database(&db, OpenMode::Existing).unwrap());
}

#[test]
fn a_read_only_duckdb_holds_the_file_against_writers_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let holder = Holding::start("hold-read-only", &db);
    let held = lock_holder(&db).unwrap().expect("a reader holds the file");
    assert_eq!(held.mode, LockMode::Read);
    assert!(matches!(held.who, Holder::Process { pid, .. } if pid == holder.pid()));
    assert!(held.to_string().ends_with(", read-only"), "{held}");
    // Another reader coexists with it; a writer (a backup's CHECKPOINT, an archive's DELETE) does not.
    drop(open_read_only(&db).unwrap());
    assert!(matches!(
        open_database(&db, OpenMode::Existing),
        Err(DataError::Locked {
            holder: Some(LockHolder {
                mode: LockMode::Read,
                ..
            }),
            ..
        })
    ));
    holder.stop();
}

#[test]
fn a_connection_of_this_process_is_found_and_keeps_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    // This process plays an embedding server.
    let conn = open_database(&db, OpenMode::Existing).unwrap();
    let me = std::process::id();
    for _ in 0..2 {
        let held = lock_holder(&db)
            .unwrap()
            .expect("our own connection holds it");
        assert!(
            matches!(held.who, Holder::Process { pid, .. } if pid == me),
            "{held:?}"
        );
        assert_eq!(held.to_string(), format!("this process, PID {me}"));
    }
    // Closing a descriptor of the file would have dropped our POSIX lock: another process still sees it.
    let seen = report(&[], "probe", &db);
    assert!(
        line(&seen, "kernel: ").contains(&format!("pid: {me},")),
        "the check released this process's lock: {seen}"
    );
    drop(conn);
}

#[test]
fn a_holder_outside_this_pid_namespace_is_still_seen() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let holder = Holding::start("hold", &db);
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc"];

    // Inside a new PID namespace the holder has no PID: /proc/locks (the old check) does not list it
    // at all, while the kernel still reports the lock.
    let inside = report(&unshare, "probe", &db);
    assert_eq!(line(&inside, "proc-locks: "), "false", "{inside}");
    assert_eq!(
        line(&inside, "kernel: "),
        "Some(LockHolder { who: OtherNamespace, mode: Write })",
        "{inside}"
    );
    let outside = report(&[], "probe", &db);
    assert_eq!(line(&outside, "proc-locks: "), "true", "{outside}");
    assert!(
        line(&outside, "kernel: ").contains(&format!("pid: {},", holder.pid())),
        "{outside}"
    );

    // A backup or archive run in that namespace is refused with the holder named the same way.
    let opened = report(&unshare, "open", &db);
    assert!(
        line(&opened, "refused: ").contains(
            "is in use by another process (in another PID namespace, e.g. another container)"
        ),
        "{opened}"
    );
    holder.stop();
    let inside = report(&unshare, "probe", &db);
    assert_eq!(line(&inside, "kernel: "), "None", "{inside}");
}
