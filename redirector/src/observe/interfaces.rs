//! `redirector_interface_attached{iface="…"}`: 1 while the programs are attached to the
//! interface of that name, 0 while it is missing or its links are severed — one sample per
//! configured interface, read from the kernel's links at each scrape
//! ([`crate::dataplane::link_state`]).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::dataplane::link_state::LinkState;

/// The family's name.
pub const FAMILY: &str = "redirector_interface_attached";

/// The gauge of one scrape.
#[derive(Debug)]
struct InterfacesCollector {
    states: Vec<(String, LinkState)>,
}

/// Registers the gauge for `states` (each configured interface and its links).
pub fn register(registry: &mut Registry, states: Vec<(String, LinkState)>) {
    registry.register_collector(Box::new(InterfacesCollector { states }));
}

impl Collector for InterfacesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            FAMILY,
            "1 if the programs are attached to the interface of that name, 0 if it is missing or its links are severed (the loader attaches them again when it appears).",
            None,
            MetricType::Gauge,
        )?;
        for (iface, state) in &self.states {
            let labels = [("iface", iface.as_str())];
            let value = i64::from(*state == LinkState::Attached);
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text;

    use super::*;

    #[test]
    fn one_sample_per_interface_1_only_when_attached() {
        let mut registry = Registry::default();
        register(
            &mut registry,
            vec![
                ("eth0".into(), LinkState::Attached),
                ("eth1".into(), LinkState::Missing),
                ("eth2".into(), LinkState::Severed),
            ],
        );
        let mut out = String::new();
        text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("redirector_interface_attached{iface=\"eth0\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("redirector_interface_attached{iface=\"eth1\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("redirector_interface_attached{iface=\"eth2\"} 0"),
            "{out}"
        );
    }
}
