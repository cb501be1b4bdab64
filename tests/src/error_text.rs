//! Error messages for the test tools: an error and its causes on one line, without repeats.

/// Formats an error with its causes, leaving out causes whose text the message already
/// contains (tungstenite and rustls errors repeat their source in their own message).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeated_causes() {
        let err = anyhow::anyhow!("reset")
            .context("protocol error: reset")
            .context("reading");
        assert_eq!(describe(&err), "reading: protocol error: reset");
    }
}
