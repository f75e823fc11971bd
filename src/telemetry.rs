//! Tracing, set up once. `RUST_LOG` filters (default `info`);
//! `LOG_FORMAT=json` switches to JSON lines.
//!
//! Whatever `RUST_LOG` says, the wire-level libraries (the AWS SDK, hyper,
//! h2, rustls) never log below DEBUG: at TRACE `aws_sigv4` prints the
//! canonical request it signs, `X-Amz-Security-Token` included, and the
//! HTTP libraries may print raw headers. SECURITY.md promises no secret in
//! the logs at any level.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::{EnvFilter, filter::filter_fn, fmt, prelude::*};

/// Target prefixes whose output is capped at [`WIRE_LOG_CAP`].
const WIRE_TARGETS: [&str; 4] = ["aws_", "hyper", "h2", "rustls"];

/// The most verbose level the wire-level targets may log at.
const WIRE_LOG_CAP: Level = Level::DEBUG;

/// False for TRACE output of the wire-level targets.
fn below_wire_cap(meta: &Metadata<'_>) -> bool {
    let wire = WIRE_TARGETS.iter().any(|p| meta.target().starts_with(p));
    !wire || *meta.level() <= WIRE_LOG_CAP
}

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,aws=warn,hyper=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter_fn(below_wire_cap)),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter_fn(below_wire_cap)),
            )
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use tracing::{Level, Metadata, callsite::Identifier, field::FieldSet, metadata::Kind};

    use super::below_wire_cap;

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!()
        }
    }
    static CALLSITE: Callsite = Callsite;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&CALLSITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn wire_level_targets_are_capped_at_debug() {
        for target in [
            "aws_sigv4::http_request::sign",
            "aws_smithy_runtime",
            "hyper_util::client",
            "h2::codec",
            "rustls::conn",
        ] {
            assert!(!below_wire_cap(&meta(target, Level::TRACE)), "{target}");
            assert!(below_wire_cap(&meta(target, Level::DEBUG)), "{target}");
        }
        assert!(below_wire_cap(&meta("sluicegate::drain", Level::TRACE)));
        assert!(below_wire_cap(&meta("sqlx::query", Level::TRACE)));
    }
}
