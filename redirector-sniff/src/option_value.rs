//! Values of the proxy's options parsed from text (`--relay`, `--not-http`,
//! `--proxy-protocol`, `--ws-sni`): one error shape for all of them, and the keyword table
//! the enums among them are parsed from and printed with.
//!
//! clap calls `FromStr` and prints the error after its own "invalid value 'X' for
//! '--OPTION <…>': ", so the message says which option and what it accepts. These stay
//! `FromStr` rather than clap `ValueEnum`s: a `ValueEnum` would replace that message with
//! clap's "[possible values: …]" list and add the list to `--help`, and this crate would
//! depend on clap.

use std::fmt::Write as _;

/// A value an option does not accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{option} `{value}`: expected {expected}")]
pub struct InvalidValue {
    /// The option without its dashes, as `redirector sniff` spells it (`relay`).
    pub option: &'static str,
    /// The value given.
    pub value: String,
    /// What the option accepts, in words (`auto, splice or copy`).
    pub expected: String,
}

/// An option whose values are one keyword per variant (`--relay copy`).
pub trait Keyword: Copy + PartialEq + 'static {
    /// The option without its dashes (`relay`).
    const OPTION: &'static str;
    /// Every variant with its keyword, in the order error messages list them.
    const KEYWORDS: &'static [(&'static str, Self)];

    /// The variant spelled `value` (exactly: keywords are lower-case).
    fn from_keyword(value: &str) -> Result<Self, InvalidValue> {
        Self::KEYWORDS
            .iter()
            .find(|(keyword, _)| *keyword == value)
            .map(|(_, variant)| *variant)
            .ok_or_else(|| InvalidValue {
                option: Self::OPTION,
                value: value.to_string(),
                expected: one_of(Self::KEYWORDS.iter().map(|(keyword, _)| *keyword)),
            })
    }

    /// This variant's keyword.
    fn keyword(self) -> &'static str {
        Self::KEYWORDS
            .iter()
            .find(|(_, variant)| *variant == self)
            .map(|(keyword, _)| *keyword)
            .expect("KEYWORDS lists every variant")
    }
}

/// `a`, `a or b`, `a, b or c`, ….
fn one_of<'a>(words: impl ExactSizeIterator<Item = &'a str>) -> String {
    let last = words.len().saturating_sub(1);
    let mut text = String::new();
    for (i, word) in words.enumerate() {
        let separator = match i {
            0 => "",
            i if i == last => " or ",
            _ => ", ",
        };
        let _ = write!(text, "{separator}{word}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        proxy_protocol::ProxyProtocol, server::NotHttpPolicy, sni::SniPattern, splice::RelayMode,
    };

    /// Every keyword parses to its variant and prints back as itself.
    fn round_trips<T: Keyword + std::fmt::Debug>() {
        for (keyword, variant) in T::KEYWORDS {
            assert_eq!(T::from_keyword(keyword), Ok(*variant));
            assert_eq!(variant.keyword(), *keyword);
        }
    }

    #[test]
    fn keywords_round_trip() {
        round_trips::<RelayMode>();
        round_trips::<NotHttpPolicy>();
        round_trips::<ProxyProtocol>();
    }

    /// The messages the CLI printed when each option had its own error type.
    #[test]
    fn messages_name_the_option_and_what_it_accepts() {
        let cases = [
            (
                "bogus".parse::<RelayMode>().unwrap_err(),
                "invalid --relay `bogus`: expected auto, splice or copy",
            ),
            (
                "Copy".parse::<RelayMode>().unwrap_err(),
                "invalid --relay `Copy`: expected auto, splice or copy",
            ),
            (
                "bogus".parse::<NotHttpPolicy>().unwrap_err(),
                "invalid --not-http `bogus`: expected close or http",
            ),
            (
                "v3".parse::<ProxyProtocol>().unwrap_err(),
                "invalid --proxy-protocol `v3`: expected v1 or v2",
            ),
            (
                "a_b.c".parse::<SniPattern>().unwrap_err(),
                "invalid --ws-sni `a_b.c`: expected a host name such as ws.example.com or \
                 *.example.com",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn one_of_joins_with_commas_and_a_final_or() {
        assert_eq!(one_of([].into_iter()), "");
        assert_eq!(one_of(["a"].into_iter()), "a");
        assert_eq!(one_of(["a", "b"].into_iter()), "a or b");
        assert_eq!(one_of(["a", "b", "c"].into_iter()), "a, b or c");
    }
}
