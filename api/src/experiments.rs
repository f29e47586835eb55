//! The running experiments (migration V9's `experiments`, written by `feedrank experiments`) and
//! each user's arms in them.
//!
//! The experiments with a start that are neither stopped nor ended are kept in process, read
//! again at most [`RELOAD`] after the last read and at the next request after
//! `NOTIFY feedrank_experiments_changed` (`invalidation`); whether each one runs is checked at
//! every request against its own window, so a start or an end takes effect on time.
//!
//! Every running experiment labels the page with the user's arm (layers: each experiment splits
//! users by its own salt, independently of the others). At most one arm changes the page, chosen
//! by the core's rule (`feedrank_core::experiment::user_arms`, which the pipeline calls too): the
//! arm of the earliest-started experiment whose arm for the user changes the feed; the other
//! experiments' arms are labelled only (`applied: false`). A `random` or `sources` arm is applied
//! here, at request time. A `config` arm's lists are the pipeline's: it is `applied` when the run
//! the page is served from computed the user's list with it ([`RunExperiments`], reading the
//! run's record `recommendation_runs.config.experiments`), and labelled only until then.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use feedrank_core::config::BlendShares;
use feedrank_core::experiment::{sort_for_rule, user_arms, Arm, Experiment, Treatment};
use uuid::Uuid;

use crate::db;
use crate::error::ApiError;
use crate::memo::{Refreshed, TtlCache};
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
    /// The `config` arm the rule applies, if it is one: `applied` once the page's run is known.
    pub config_arm: Option<ConfigArm>,
}

/// A `config` arm the rule applies to a user. Its lists are the pipeline's, so it shaped a page
/// only when the run the page is served from computed the user's list with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigArm {
    /// Its place in [`Assignment::arms`].
    pub index: usize,
    pub experiment: String,
    pub salt: String,
    pub arm: Arm,
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
    let mut experiments: Vec<Experiment> = stored
        .iter()
        .filter_map(|json| match Experiment::from_json(json) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable experiment definition, left out");
                None
            }
        })
        .collect();
    sort_for_rule(&mut experiments);
    Ok(experiments)
}

/// `user`'s arms in those of `scheduled` (in the rule's order) that run now, and the change of
/// the arm that applies (the core's rule).
fn assign(scheduled: &Arc<Vec<Experiment>>, user: Uuid) -> Assignment {
    let now = Utc::now();
    let mut buffer = Uuid::encode_buffer();
    // the canonical text of a UUID, as Python's str(uuid) writes it
    let user_id: &str = user.hyphenated().encode_lower(&mut buffer);
    let arms = user_arms(scheduled.iter().filter(|e| e.is_running_at(now)), user_id);
    let mut out = Assignment::default();
    if let Some((e, arm)) = arms.applied_arm() {
        match &arm.treatment {
            Treatment::Random => out.change = Some(PageChange::RandomFeed),
            Treatment::Sources(shares) => out.change = Some(PageChange::Blend(*shares)),
            Treatment::Config(_) => {
                out.config_arm = Some(ConfigArm {
                    index: arms.applied.unwrap_or_default(),
                    experiment: e.name.clone(),
                    salt: e.salt.clone(),
                    arm: arm.clone(),
                })
            }
        }
    }
    out.arms = arms
        .arms
        .iter()
        .enumerate()
        .map(|(i, (e, arm))| ExperimentArm {
            experiment: e.name.clone(),
            arm: arm.name.clone(),
            // a config arm waits for the page's run (`RunExperiments`)
            applied: arms.applied == Some(i) && out.change.is_some(),
        })
        .collect();
    out
}

/// Recommendation runs kept with what they applied (immutable once written: the bound is memory).
const RUNS_CAPACITY: usize = 256;
const RUNS_TTL: Duration = Duration::from_secs(3600);

/// What each recommendation run applied: the experiments running at its snapshot, as the pipeline
/// recorded them in `recommendation_runs.config.experiments` (`{name: {"definition": ..., "arms":
/// {arm: the resolved config}}}`), read once per run.
pub struct RunExperiments {
    runs: TtlCache<i64, Arc<Vec<Experiment>>>,
}

impl Default for RunExperiments {
    fn default() -> Self {
        RunExperiments {
            runs: TtlCache::new(RUNS_CAPACITY, RUNS_TTL),
        }
    }
}

impl RunExperiments {
    /// Whether run `run_id` computed `user`'s list with `arm`: the core's rule over the
    /// experiments the run recorded gives the user that same arm. False when the run recorded
    /// none, or cannot be read (logged; asked again next time).
    pub async fn computed_with(&self, pg: &Pool, run_id: i64, user: Uuid, arm: &ConfigArm) -> bool {
        let recorded = match self.runs.get(&run_id) {
            Some(r) => r,
            None => match db::run_experiments(pg, run_id).await {
                Ok(stored) => {
                    let r = Arc::new(parse_run_record(run_id, stored.as_deref()));
                    self.runs.insert(run_id, r.clone());
                    r
                }
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e, "cannot read the run's experiments");
                    return false;
                }
            },
        };
        let user_id = user.hyphenated().to_string();
        user_arms(recorded.iter(), &user_id)
            .applied_arm()
            .is_some_and(|(e, a)| e.name == arm.experiment && e.salt == arm.salt && *a == arm.arm)
    }
}

/// The experiments of a run's record (see [`RunExperiments`]), in the rule's order; an entry the
/// core cannot read is left out (logged).
fn parse_run_record(run_id: i64, stored: Option<&str>) -> Vec<Experiment> {
    let Some(stored) = stored else {
        return Vec::new();
    };
    let record: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(stored) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(run = run_id, error = %e, "unreadable experiments record of a run");
            return Vec::new();
        }
    };
    let mut experiments: Vec<Experiment> = record
        .values()
        .filter_map(|entry| {
            let definition = entry.get("definition")?;
            match Experiment::from_json(&definition.to_string()) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e, "unreadable experiment of a run, left out");
                    None
                }
            }
        })
        .collect();
    sort_for_rule(&mut experiments);
    experiments
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
        // controls only: no arm of it changes the feed
        let all_config = r#"[{"name": "c1", "share": 0.5, "kind": "config", "config": {}},
                             {"name": "c2", "share": 0.5, "kind": "config", "config": {}}]"#;
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
        assert_eq!(a.config_arm, None);
        // a config arm that sets something is the rule's choice: it holds the place (the later
        // experiments label only) and waits for the page's run to say whether it applied
        let all_tuned = r#"[{"name": "t1", "share": 0.5, "kind": "config", "config": {"top_k": 9}},
                            {"name": "t2", "share": 0.5, "kind": "config", "config": {"top_k": 8}}]"#;
        let mut tuned = scheduled.as_ref().clone();
        tuned.insert(0, experiment("zeroth", "z", all_tuned));
        tuned[0].starts_at = Some(Utc::now() - chrono::Duration::hours(1));
        let t = assign(&Arc::new(tuned), user);
        assert!(t.arms.iter().all(|x| !x.applied), "{t:?}");
        assert_eq!(t.change, None);
        let c = t.config_arm.expect("the config arm the rule applies");
        assert_eq!((c.index, c.experiment.as_str()), (0, "zeroth"));
        assert_eq!(c.arm.name, t.arms[0].arm);
        // an experiment not started yet labels nobody
        let mut later = experiment("later", "d", all_random);
        later.starts_at = Some(Utc::now() + chrono::Duration::hours(1));
        assert!(assign(&Arc::new(vec![later]), user).arms.is_empty());
    }
}
