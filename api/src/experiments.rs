//! The running experiments (migration V9's `experiments`, written by `feedrank experiments`) and
//! each user's arms in them.
//!
//! The experiments with a start that are neither stopped nor ended are kept in process, read
//! again at most [`RELOAD`] after the last read and at the next request after
//! `NOTIFY feedrank_experiments_changed` (`invalidation`); whether each one runs is checked at
//! every request against its own window, so a start or an end takes effect on time.
//!
//! Every running experiment labels the page with the user's arm (layers: each experiment splits
//! users by its own salt, independently of the others). At most one arm changes the page: the
//! `random` or `sources` arm of the earliest-started experiment that gives the user one; the
//! other experiments' arms are labelled only (`applied: false`). A `config` arm is served the
//! run's lists as every user is (the pipeline computing each arm's lists is a later step).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use feedrank_core::config::BlendShares;
use feedrank_core::experiment::{Experiment, Treatment};
use uuid::Uuid;

use crate::db;
use crate::error::ApiError;
use crate::memo::Refreshed;
use crate::response::ExperimentArm;

/// The channel of migration V9's trigger.
pub const CHANNEL: &str = "feedrank_experiments_changed";
/// The experiments are read again at least this often (in case a notification is missed).
const RELOAD: Duration = Duration::from_secs(5);

/// What an applied arm changes in the page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PageChange {
    /// The seeded random feed, as `source=fallback`.
    RandomFeed,
    /// The blend deals these shares instead of the run's.
    Blend(BlendShares),
}

/// A user's arms in the running experiments and what they change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Earliest-started experiment first.
    pub arms: Vec<ExperimentArm>,
    pub change: Option<PageChange>,
}

impl Assignment {
    /// The served log's form of the arms: `experiment:arm` (names never hold ':').
    pub fn labels(&self) -> Vec<String> {
        self.arms
            .iter()
            .map(|a| format!("{}:{}", a.experiment, a.arm))
            .collect()
    }
}

pub struct Experiments {
    scheduled: Refreshed<Vec<Experiment>>,
}

impl Default for Experiments {
    fn default() -> Self {
        Experiments {
            scheduled: Refreshed::new(RELOAD),
        }
    }
}

impl Experiments {
    /// PostgreSQL said the experiments changed: the next request reads them again.
    pub fn changed(&self) {
        self.scheduled.mark_stale();
    }

    /// `user`'s arms in the experiments running now. When the experiments cannot be read, those
    /// read last are kept, or none when there are none yet (the page is served as without
    /// experiments); either way for [`RELOAD`], so that an outage costs one try per interval,
    /// not one per request.
    pub async fn assignment(&self, pg: &Pool, user: Uuid) -> Assignment {
        let scheduled = self
            .scheduled
            .get(|previous| async move {
                Ok::<_, Infallible>(match load(pg).await {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the experiments; keeping the last read");
                        previous.map(|p| p.as_ref().clone()).unwrap_or_default()
                    }
                })
            })
            .await;
        match scheduled {
            Ok(s) => assign(&s, user),
            Err(never) => match never {},
        }
    }
}

/// The definitions stored, parsed by the core; one it cannot read is left out (logged).
async fn load(pg: &Pool) -> Result<Vec<Experiment>, ApiError> {
    let stored = db::scheduled_experiments(pg).await?;
    Ok(stored
        .iter()
        .filter_map(|json| match Experiment::from_json(json) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable experiment definition, left out");
                None
            }
        })
        .collect())
}

/// `user`'s arms in those of `scheduled` (earliest start first) that run now, and the change of
/// the first arm that makes one.
fn assign(scheduled: &Arc<Vec<Experiment>>, user: Uuid) -> Assignment {
    let now = Utc::now();
    let mut buffer = Uuid::encode_buffer();
    // the canonical text of a UUID, as Python's str(uuid) writes it
    let user_id: &str = user.hyphenated().encode_lower(&mut buffer);
    let mut out = Assignment::default();
    for e in scheduled.iter().filter(|e| e.is_running_at(now)) {
        let arm = e.arm_of(user_id);
        let change = match &arm.treatment {
            Treatment::Random => Some(PageChange::RandomFeed),
            Treatment::Sources(shares) => Some(PageChange::Blend(*shares)),
            Treatment::Config(_) => None,
        };
        let applied = change.is_some() && out.change.is_none();
        if applied {
            out.change = change;
        }
        out.arms.push(ExperimentArm {
            experiment: e.name.clone(),
            arm: arm.name.clone(),
            applied,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(name: &str, salt: &str, arms: &str) -> Experiment {
        let start = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        Experiment::from_json(&format!(
            r#"{{"name": "{name}", "salt": "{salt}", "starts_at": "{start}", "arms": {arms}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_earliest_started_changing_arm_applies_and_the_others_only_label() {
        let all_random = r#"[{"name": "r1", "share": 0.5, "kind": "random"},
                             {"name": "r2", "share": 0.5, "kind": "random"}]"#;
        let all_fresh = r#"[{"name": "f1", "share": 0.5, "kind": "sources", "sources": {"fresh": 1}},
                            {"name": "f2", "share": 0.5, "kind": "sources", "sources": {"fresh": 1}}]"#;
        let all_config = r#"[{"name": "c1", "share": 0.5, "kind": "config", "config": {}},
                             {"name": "c2", "share": 0.5, "kind": "config", "config": {"top_k": 9}}]"#;
        let scheduled = Arc::new(vec![
            experiment("first", "a", all_config),
            experiment("second", "b", all_fresh),
            experiment("third", "c", all_random),
        ]);
        let user = Uuid::new_v4();
        let a = assign(&scheduled, user);
        let names: Vec<(&str, bool)> = a
            .arms
            .iter()
            .map(|x| (x.experiment.as_str(), x.applied))
            .collect();
        assert_eq!(
            names,
            [("first", false), ("second", true), ("third", false)]
        );
        let Some(PageChange::Blend(shares)) = a.change else {
            panic!("{a:?}")
        };
        assert_eq!(shares.as_array(), [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(a.labels()[1], format!("second:{}", a.arms[1].arm));
        // the same user, the same arms
        assert_eq!(assign(&scheduled, user), a);
        // an experiment not started yet labels nobody
        let mut later = experiment("later", "d", all_random);
        later.starts_at = Some(Utc::now() + chrono::Duration::hours(1));
        assert!(assign(&Arc::new(vec![later]), user).arms.is_empty());
    }
}
