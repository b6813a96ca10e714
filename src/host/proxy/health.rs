//! A node's health as the checks see it: counts of successes and failures
//! in a row against an upstream's thresholds (APISIX's `checks`, from
//! lua-resty-healthcheck): an unhealthy node turns healthy after
//! `healthy.successes` successes in a row; a healthy one turns unhealthy
//! after `unhealthy.http_failures` failing answers, `tcp_failures`
//! connection failures or `timeouts` timeouts in a row. A success clears
//! the failure counts; a failure clears the success count.

use crate::host::config::HealthRules;

/// What one answer, probe or failure says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// A status of `healthy.http_statuses` (an active `tcp` probe that
    /// connected; any answer for a passive `tcp` check).
    Success,
    /// A status of `unhealthy.http_statuses`.
    HttpFailure,
    /// The connection was refused, reset or closed before an answer.
    TcpFailure,
    /// No answer in time.
    Timeout,
}

impl Report {
    /// What `status` says under `rules`: `None` for a status in neither
    /// list (it changes nothing).
    pub(super) fn of_status(status: u16, rules: &HealthRules) -> Option<Report> {
        if rules.healthy_statuses.contains(&status) {
            Some(Report::Success)
        } else if rules.unhealthy_statuses.contains(&status) {
            Some(Report::HttpFailure)
        } else {
            None
        }
    }
}

/// One node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeHealth {
    pub(super) healthy: bool,
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

impl Default for NodeHealth {
    /// Healthy, as a node is until a check says otherwise.
    fn default() -> Self {
        NodeHealth {
            healthy: true,
            successes: 0,
            http_failures: 0,
            tcp_failures: 0,
            timeouts: 0,
        }
    }
}

impl NodeHealth {
    /// Counts `report`; `Some(healthy)` when the node changes state.
    pub(super) fn report(&mut self, report: Report, rules: &HealthRules) -> Option<bool> {
        let (count, threshold) = match report {
            Report::Success => {
                self.http_failures = 0;
                self.tcp_failures = 0;
                self.timeouts = 0;
                if self.healthy {
                    return None;
                }
                self.successes += 1;
                (self.successes, rules.successes)
            }
            failure => {
                self.successes = 0;
                if !self.healthy {
                    return None;
                }
                let (counter, threshold) = match failure {
                    Report::HttpFailure => (&mut self.http_failures, rules.http_failures),
                    Report::TcpFailure => (&mut self.tcp_failures, rules.tcp_failures),
                    _ => (&mut self.timeouts, rules.timeouts),
                };
                *counter += 1;
                (*counter, threshold)
            }
        };
        if count < threshold {
            return None;
        }
        *self = NodeHealth {
            healthy: report == Report::Success,
            ..NodeHealth::default()
        };
        Some(self.healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HealthRules {
        HealthRules {
            healthy_statuses: vec![200],
            successes: 2,
            unhealthy_statuses: vec![500],
            http_failures: 3,
            tcp_failures: 2,
            timeouts: 2,
        }
    }

    #[test]
    fn failures_in_a_row_turn_a_node_unhealthy_and_successes_bring_it_back() {
        let (r, mut h) = (rules(), NodeHealth::default());
        assert_eq!(h.report(Report::HttpFailure, &r), None);
        assert_eq!(h.report(Report::HttpFailure, &r), None);
        assert_eq!(h.report(Report::HttpFailure, &r), Some(false));
        assert!(!h.healthy);
        // More failures change nothing; one success is not enough.
        assert_eq!(h.report(Report::TcpFailure, &r), None);
        assert_eq!(h.report(Report::Success, &r), None);
        assert_eq!(h.report(Report::Success, &r), Some(true));
        assert!(h.healthy);
    }

    #[test]
    fn a_success_breaks_a_run_of_failures() {
        let (r, mut h) = (rules(), NodeHealth::default());
        for _ in 0..5 {
            assert_eq!(h.report(Report::HttpFailure, &r), None);
            assert_eq!(h.report(Report::HttpFailure, &r), None);
            assert_eq!(h.report(Report::Success, &r), None);
        }
        assert!(h.healthy);
        assert_eq!(h.report(Report::Timeout, &r), None);
        assert_eq!(h.report(Report::Timeout, &r), Some(false));
    }

    #[test]
    fn a_failure_breaks_a_run_of_successes() {
        let (r, mut h) = (rules(), NodeHealth::default());
        h.report(Report::TcpFailure, &r);
        assert_eq!(h.report(Report::TcpFailure, &r), Some(false));
        assert_eq!(h.report(Report::Success, &r), None);
        assert_eq!(h.report(Report::Timeout, &r), None);
        assert_eq!(h.report(Report::Success, &r), None);
        assert_eq!(h.report(Report::Success, &r), Some(true));
    }

    #[test]
    fn statuses_in_neither_list_say_nothing() {
        let r = rules();
        assert_eq!(Report::of_status(200, &r), Some(Report::Success));
        assert_eq!(Report::of_status(500, &r), Some(Report::HttpFailure));
        assert_eq!(Report::of_status(404, &r), None);
    }
}
