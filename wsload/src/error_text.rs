//! Error messages on one line: an error and its causes, without repeats.

use std::error::Error;

/// Formats an error with its causes, leaving out causes whose text the message already
/// contains (tungstenite and rustls errors repeat their source in their own message).
///
/// For an `anyhow::Error`, pass `err.as_ref()`.
pub fn describe(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let line = err.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source, as the typed errors of wsload have.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to 127.0.0.1:1")]
    struct Connect(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let err = Connect(std::io::Error::other("refused"));
        assert_eq!(describe(&err), "cannot connect to 127.0.0.1:1: refused");
    }

    #[test]
    fn drops_repeated_causes() {
        let err = anyhow::anyhow!("reset")
            .context("protocol error: reset")
            .context("reading");
        assert_eq!(describe(err.as_ref()), "reading: protocol error: reset");
    }
}
