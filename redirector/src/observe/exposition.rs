//! The `/metrics` body in the format the scraper asked for: OpenMetrics text when its
//! `Accept` header prefers `application/openmetrics-text`, else the Prometheus text format
//! 0.0.4 (what plain `curl` and older scrapers get). Both come from `prometheus-client`'s
//! encoders over the same [`Registry`].

use prometheus_client::{encoding, registry::Registry};

/// `Content-Type` of the OpenMetrics text (ends with `# EOF`).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = encoding::prometheus_text::CONTENT_TYPE;

/// One of the two text formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: counter families named without `_total`, `# EOF` last.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header (absent: `None`) asks for: OpenMetrics if its
    /// q-value is at least that of every text type the header accepts (`text/plain`,
    /// `text/*`, `*/*`; others, like protobuf, are never served), else 0.0.4.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics = 0.0f32;
        let mut other = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media == "application/openmetrics-text" {
                openmetrics = openmetrics.max(q);
            } else if matches!(media.as_str(), "text/plain" | "text/*" | "*/*") {
                // Types this server cannot produce (e.g. protobuf) do not compete.
                other = other.max(q);
            }
        }
        if openmetrics > 0.0 && openmetrics >= other {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }

    /// `registry` encoded in this format.
    pub fn encode(self, registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        match self {
            Format::OpenMetrics => encoding::text::encode(&mut out, registry)?,
            Format::Prometheus => encoding::prometheus_text::encode(&mut out, registry)?,
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn negotiates_by_accept_and_q() {
        let f = |a: &str| Format::negotiate(Some(a));
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(f(""), Format::Prometheus);
        assert_eq!(f("*/*"), Format::Prometheus);
        assert_eq!(f("text/plain; version=0.0.4"), Format::Prometheus);
        assert_eq!(f("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(
            f("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"),
            Format::OpenMetrics
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            f("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
            Format::OpenMetrics
        );
        assert_eq!(
            f("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
            Format::Prometheus
        );
        assert_eq!(f("application/openmetrics-text;q=0"), Format::Prometheus);
        // Protobuf preferred (native histograms): not served, so OpenMetrics.
        assert_eq!(
            f("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"),
            Format::OpenMetrics
        );
    }

    #[test]
    fn encodes_both_formats() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("demo", "A demo", counter);
        let om = Format::OpenMetrics.encode(&registry).unwrap();
        assert!(om.contains("# TYPE demo counter\ndemo_total 1\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = Format::Prometheus.encode(&registry).unwrap();
        assert!(
            text.contains("# TYPE demo_total counter\ndemo_total 1\n"),
            "{text}"
        );
        assert!(!text.contains("EOF"), "{text}");
    }
}
