//! Post-install health check: an HTTP GET of `health_url` answering 2xx, and/or `health_command`
//! exiting 0, polled with backoff until `health_timeout` seconds have passed. Both must pass when
//! both are set. The URL comes from the bundle's policy (rollback.healthCheckUrl) or node config.

use crate::support::cmd::Cmd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub url: Option<String>,
    pub command: Option<String>,
    pub timeout: Duration,
}

impl HealthSpec {
    pub fn is_empty(&self) -> bool {
        self.url.is_none() && self.command.is_none()
    }
}

fn probe_url(url: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("{url} answered {}", resp.status().as_u16())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

fn probe_command(command: &str, timeout: Duration) -> Result<(), String> {
    Cmd::new("sh")
        .arg("-c")
        .arg(command)
        .run_with_timeout(timeout)
        .map(|_| ())
}

/// Poll until every configured check passes or the timeout runs out. Returns the last failure.
pub fn check(spec: &HealthSpec) -> Result<(), String> {
    if spec.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + spec.timeout;
    let mut wait = Duration::from_millis(500);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let per_try = left.min(Duration::from_secs(15));
        let result = spec
            .url
            .as_deref()
            .map_or(Ok(()), |u| probe_url(u, per_try))
            .and_then(|_| {
                spec.command
                    .as_deref()
                    .map_or(Ok(()), |c| probe_command(c, per_try))
            });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + wait >= deadline => {
                return Err(format!(
                    "health check failed for {}s: {e}",
                    spec.timeout.as_secs()
                ))
            }
            Err(e) => log::info!("health check not yet passing: {e}"),
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_checks_pass_and_fail() {
        let ok = HealthSpec {
            url: None,
            command: Some("true".into()),
            timeout: Duration::from_secs(2),
        };
        check(&ok).unwrap();
        let bad = HealthSpec {
            url: None,
            command: Some("exit 3".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(check(&bad).unwrap_err().contains("health check failed"));
        let slow = HealthSpec {
            url: None,
            command: Some("sleep 30".into()),
            timeout: Duration::from_secs(1),
        };
        let t = Instant::now();
        assert!(check(&slow).is_err());
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a hanging check is cut off"
        );
    }
}
