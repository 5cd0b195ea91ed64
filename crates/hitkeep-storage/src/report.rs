//! How an error is shown to a person: its message, each cause the message does not already hold,
//! and the hint last. One function, so the `hitkeep` binary, an embedding server and the snapshot
//! tests of every crate print an error alike.
//!
//! It lives here, in the lowest crate the others depend on, because it knows nothing of their
//! types: callers find the hint (each library error has a `hint()`) and pass it in.

use std::error::Error as StdError;

/// The error's message, then `  caused by: …` for each source whose text is not already shown
/// (thiserror's `{source}` puts a cause into its parent's message, and it is not repeated), then
/// `  hint: …` when there is one:
///
/// ```text
/// upload shared/2026-03-08T120000Z/hits.parquet: cannot connect to http://127.0.0.1:9000
///   caused by: Unexpected (temporary) at write => send http request
///   hint: is the server running at http://127.0.0.1:9000? check HITKEEP_S3_ENDPOINT
/// ```
///
/// A storage [`Error`](crate::Error) also carries its hint in its own text, for callers that print
/// it alone; a `  hint: …` line that the printed hint holds is left out of the message and causes,
/// so the hint is printed once, last.
pub fn render(err: &(dyn StdError + 'static), hint: Option<&str>) -> String {
    let mut out = without_hint(&err.to_string(), hint);
    let mut source = err.source();
    while let Some(cause) = source {
        let text = without_hint(&cause.to_string(), hint);
        if !text.is_empty() && !out.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    if let Some(hint) = hint {
        out.push_str("\n  hint: ");
        out.push_str(hint);
    }
    out
}

/// `text` without its `  hint: …` lines whose advice `hint` already gives.
fn without_hint(text: &str, hint: Option<&str>) -> String {
    let Some(hint) = hint else {
        return text.to_owned();
    };
    text.lines()
        .filter(|line| {
            line.strip_prefix("  hint: ")
                .is_none_or(|said| !hint.contains(said))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::render;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Formats its cause in, as thiserror errors here do.
        #[error("opening /d/hitkeep.db: {0}")]
        Says(#[source] Inner),
        /// Leaves its cause out.
        #[error("the backup cycle failed")]
        Quiet(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("permission denied")]
    struct Inner;

    #[test]
    fn causes_are_listed_once_and_the_hint_comes_last() {
        assert_eq!(
            render(&Outer::Says(Inner), Some("run it as the file's owner")),
            "opening /d/hitkeep.db: permission denied\n  hint: run it as the file's owner"
        );
        assert_eq!(
            render(&Outer::Quiet(Inner), None),
            "the backup cycle failed\n  caused by: permission denied"
        );
    }

    #[test]
    fn a_storage_errors_own_hint_line_is_moved_to_the_end() {
        let err = crate::Error::integrity("shared/x/manifest.json");
        let hint = err.hint().unwrap().to_owned();
        assert!(err.to_string().contains(&format!("\n  hint: {hint}")));
        let shown = render(&err, Some(&hint));
        assert_eq!(shown.matches("hint: ").count(), 1, "{shown}");
        assert!(shown.ends_with(&format!("\n  hint: {hint}")), "{shown}");
        // A wrapper whose hint adds to the storage error's keeps one hint line too.
        let longer = format!("{hint}; then run the command again");
        let shown = render(&err, Some(&longer));
        assert_eq!(shown.matches("hint: ").count(), 1, "{shown}");
    }
}
