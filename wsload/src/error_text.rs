//! Error messages on one line: an error and its causes, without repeats.

use std::error::Error;

/// Formats an error with its causes, leaving out causes whose text the message already
/// contains (tungstenite and rustls errors repeat their source in their own message).
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

    #[test]
    fn causes_are_joined_once() {
        let inner = std::io::Error::other("refused");
        let err = crate::connect::ConnectError::Tcp {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: inner,
        };
        assert_eq!(describe(&err), "cannot connect to 127.0.0.1:1: refused");
    }
}
