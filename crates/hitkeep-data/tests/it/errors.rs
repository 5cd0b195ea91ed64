//! A data error as the `hitkeep` binary prints it: the message, its causes, the hint last.

use hitkeep_data::{DataLayout, ErrorKind, OpenMode};
use hitkeep_storage::report::render;

/// A database that is not where the settings say: the most common first mistake.
#[test]
fn a_missing_database_prints_its_path_and_the_settings_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
    let err = layout
        .open(&layout.db_path, OpenMode::Existing)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!layout.db_path.exists(), "nothing was created");
    let printed = format!("error: {}", render(&err, err.hint().as_deref()));
    // tempfile's folders are `{TMPDIR}/.tmpXXXXXX`.
    insta::with_settings!({filters => vec![(r"\S*/\.tmp\w+", "[TMP]")]}, {
        insta::assert_snapshot!("missing_database", printed);
    });
}
