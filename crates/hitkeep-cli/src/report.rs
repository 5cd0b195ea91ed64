//! How the binary prints an error: `error: <message>`, each cause the message does not already hold
//! as `  caused by: …`, and last the hint, the first one found along the chain. The layout is
//! [`hitkeep_storage::report::render`]'s, which the libraries' snapshot tests pin too.

use std::error::Error as StdError;

/// Prints `e` to stderr, with its causes and its hint.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {}", render(e.as_ref()));
}

/// `e`'s message, causes and hint, for a line the caller starts itself (`error: …: {render}`).
pub fn render(e: &(dyn StdError + 'static)) -> String {
    hitkeep_storage::report::render(e, hint(e).as_deref())
}

/// The first hint along `e`'s chain of sources: the outermost error that has advice knows best
/// what was being done (a wrapper passes its source's hint through, or adds to it).
pub fn hint(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut link = Some(e);
    while let Some(error) = link {
        if let Some(hint) = hint_of(error) {
            return Some(hint);
        }
        link = error.source();
    }
    None
}

/// The hint of one link, when it is one of the libraries' errors.
fn hint_of(link: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(e) = link.downcast_ref::<hitkeep_service::Error>() {
        return e.hint();
    }
    if let Some(e) = link.downcast_ref::<hitkeep_backup::Error>() {
        return e.hint();
    }
    if let Some(e) = link.downcast_ref::<hitkeep_archive::Error>() {
        return e.hint();
    }
    if let Some(e) = link.downcast_ref::<hitkeep_data::DataError>() {
        return e.hint();
    }
    link.downcast_ref::<hitkeep_storage::Error>()
        .and_then(|e| e.hint().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint comes last, once, from the first error along the chain that has one, under the
    /// contexts the commands add.
    #[test]
    fn the_hint_of_a_wrapped_library_error_is_printed_last() {
        let data = hitkeep_data::DataError::Missing {
            path: "/d/hitkeep.db".into(),
        };
        let e = anyhow::Error::new(hitkeep_backup::Error::from(data)).context("backup cycle");
        assert_eq!(
            render(e.as_ref()),
            "backup cycle\n  caused by: /d/hitkeep.db does not exist\n  hint: check HITKEEP_DB_PATH / HITKEEP_DATA_PATH (run `hitkeep demo` to create demo data)"
        );
        let storage = hitkeep_storage::Error::integrity("shared/x/hits.parquet");
        let e = anyhow::Error::new(storage);
        let shown = render(e.as_ref());
        assert_eq!(shown.matches("hint: ").count(), 1, "{shown}");
        assert!(shown.ends_with("do not use it for backups"), "{shown}");
        let plain = anyhow::anyhow!("no hint here");
        assert_eq!(render(plain.as_ref()), "no hint here");
    }
}
